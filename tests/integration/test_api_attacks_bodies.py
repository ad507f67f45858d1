"""An outsider's attacks carried in request bodies and paths on a real uvicorn server on 127.0.0.1.

Each test is kept as a regression test of the answer that held, and names the source its
attack comes from: Pillow's security notes (decompression bombs, MAX_TEXT_CHUNK, formats),
OWASP API Security Top 10 2023 (API4 unrestricted resource consumption, API8
misconfiguration: identifiers and error bodies). The attacks on the request line, headers
and framing are in test_api_attacks_headers.py; both attack the server of
tests/api_server.py's :func:`attacked_settings`.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Iterator

import httpx
import pytest
from PIL import Image

from resources.config import Settings
from search_app.service import MAX_PARTS, SearchService
from tests.api_server import ANSWER_S, attacked_settings, exchange, request, serving


@pytest.fixture(scope="module")
def service(settings: Settings, one_torch_thread) -> SearchService:
    return SearchService.from_settings(settings)


@pytest.fixture(scope="module")
def port(service: SearchService, settings: Settings) -> Iterator[int]:
    """Keyless, loopback only, also answering ``search.lan`` and CORS for :data:`APP_ORIGIN`."""
    with serving(service, attacked_settings(settings)) as port:
        yield port


def jpeg(size: tuple[int, int] = (32, 32), **save: object) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, format="JPEG", **save)
    return out.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def upload(port: int, data: bytes, name: str = "a.jpg", content_type: str = "image/jpeg") -> httpx.Response:
    files = {"image": (name, data, content_type)}
    return httpx.post(f"http://127.0.0.1:{port}/search/image", files=files, data={"k": "2"}, timeout=ANSWER_S)


# --- Images (Pillow security notes; OWASP API4:2023) -------------------------------------------------------------


def _webp_animation(frames: int) -> bytes:
    out = io.BytesIO()
    images = [Image.new("RGB", (16, 16), (n % 256, 0, 0)) for n in range(frames)]
    images[0].save(out, format="WEBP", save_all=True, append_images=images[1:], duration=1)
    return out.getvalue()


def _mpo() -> bytes:
    out = io.BytesIO()
    first, second = Image.new("RGB", (64, 64), "red"), Image.new("RGB", (64, 64), "blue")
    first.save(out, format="MPO", save_all=True, append_images=[second])
    return out.getvalue()


def _png_with(kind: bytes, data: bytes) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="PNG")
    raw = out.getvalue()
    return raw[:33] + png_chunk(kind, data) + raw[33:]  # right after IHDR


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) declares another size: the data is that of 32x32."""
    data = bytearray(jpeg())
    at = data.index(b"\xff\xc0") + 5
    data[at : at + 4] = struct.pack(">HH", height, width)
    return bytes(data)


def _noise_jpeg() -> bytes:
    out = io.BytesIO()
    Image.effect_noise((256, 256), 50).convert("RGB").save(out, format="JPEG")
    return out.getvalue()


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 8
    return jpeg((40, 20), exif=exif.tobytes())


@pytest.mark.parametrize(
    ("data", "status", "detail"),
    [
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00" * 64, 415, "JPEG2000"),  # a JPEG 2000 renamed .jpg
        (b"GIF89a" + b"\x00" * 64, 415, "GIF"),
        (b"II*\x00" + b"\x00" * 64, 415, "TIFF"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', 400, "is not an image"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n", 415, "EPS"),
        (_noise_jpeg()[:16_000], 400, "failed to decode"),  # truncated half-way
        (_jpeg_declaring(8000, 8000), 413, "declares 8000x8000"),
        (
            _png_with(b"zTXt", b"k\x00\x00" + zlib.compress(b"\x00" * 200_000_000, 9)),
            400,
            "not an image",
        ),  # a text bomb
        (_png_with(b"iCCP", b"p\x00\x00" + zlib.compress(b"\x00" * 200_000_000, 9)), 400, "not an image"),
    ],
)
def test_images_that_are_refused(port: int, data: bytes, status: int, detail: str):
    answer = upload(port, data, name="../../etc/passwd.jpg", content_type="image/jpeg")
    assert answer.status_code == status and detail in answer.json()["detail"], answer.text
    assert answer.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "data",
    [
        jpeg() + b"PK\x03\x04" + b"\x00" * 26 + b"<html><script>alert(1)</script></html>",  # a JPEG/ZIP/HTML polyglot
        _exif_rotated(),
        _mpo(),
        _webp_animation(300),  # only the first frame is decoded
        _jpeg_declaring(6000, 6000),  # under the cap, its data is 32x32: decodes at reduced scale or fails cleanly
    ],
    ids=["polyglot", "exif-rotated", "mpo", "webp-300-frames", "jpeg-declaring-6000"],
)
def test_images_that_are_decoded_as_what_they_are(port: int, data: bytes):
    answer = upload(port, data, name='C:\\x\\..\\"; name="evil', content_type="image/svg+xml")
    assert answer.status_code in (200, 400), answer.text
    if answer.status_code == 400:
        assert "failed to decode" in answer.json()["detail"]
    else:
        assert answer.json()["query"] == {"image_bytes": len(data)}


def test_an_mpo_decodes_at_reduced_scale_like_the_jpeg_it_is():
    """Pillow's JPEG plugin opens a multi-picture JPEG as MPO; the DCT scaling promised for large JPEGs must apply."""
    from resources.images.pictures import open_image

    out = io.BytesIO()
    frame = Image.new("RGB", (2048, 2048), "red")
    frame.save(out, format="MPO", save_all=True, append_images=[frame])
    image = open_image(out.getvalue(), draft_to=224)
    image.load()
    assert image.format == "MPO" and max(image.size) <= 512


def test_composed_uploads_are_bounded(port: int):
    small = jpeg()
    files = [("images", (f"../{n}.jpg", small, "image/jpeg")) for n in range(MAX_PARTS + 1)]
    answer = httpx.post(
        f"http://127.0.0.1:{port}/search/composed", data={"expr": "image:0"}, files=files, timeout=ANSWER_S
    )
    assert answer.status_code == 400 and "use at most" in answer.json()["detail"]
    files = [("images", ("a.jpg", small, "image/jpeg"))] * 3
    answer = httpx.post(
        f"http://127.0.0.1:{port}/search/composed",
        data={"expr": "image:0 + image:0 - image:2", "k": "2"},
        files=files,
        timeout=ANSWER_S,
    )
    assert answer.status_code == 200, answer.text
    for form in ({"expr": "photo:../../etc/passwd"}, {"parts": '[{"photo_id": "a/../b"}]'}, {"expr": "photo:ａｂｃ"}):
        answer = httpx.post(f"http://127.0.0.1:{port}/search/composed", data=form, timeout=ANSWER_S)
        assert answer.status_code in (400, 422) and "photo" in answer.json()["detail"], answer.text
    deep = "[" * 50_000 + "]" * 50_000
    answer = httpx.post(f"http://127.0.0.1:{port}/search/composed", data={"parts": deep[: 60 * 1024]}, timeout=ANSWER_S)
    assert answer.status_code in (400, 422) and answer.headers["content-type"] == "application/problem+json"


# --- Identifiers and errors (OWASP API8:2023) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/photos/%EF%BD%81%EF%BD%82%EF%BD%83",  # fullwidth letters, which \w would take
        "/photos/abc%0A",  # a trailing newline, which Python's $ would take
        "/photos/abc%00",
        "/photos/%E2%80%AEabc",  # right-to-left override
        "/photos/" + "a" * 201,
        "/photos/a%20b/similar",
        "/saved/x/marks/%F0%9F%98%80",
    ],
)
def test_photo_ids_of_another_shape_never_reach_the_index(port: int, path: str):
    method = "PUT" if "/marks/" in path else "GET"
    status, answer = exchange(
        port, request(method, path, "Host: 127.0.0.1", "Content-Type: application/json", body=b'{"mark": "good"}')
    )
    assert status == 422 and b"photo_id" in answer


@pytest.mark.parametrize("name", ["..", ".", "a%2F..", "%2E%2E", "con.json", "a" * 65, "%00", "..%5C..%5Cx"])
def test_saved_search_names_of_another_shape(port: int, name: str):
    status, answer = exchange(port, request("GET", f"/saved/{name}", "Host: 127.0.0.1"))
    assert status in (400, 404, 422) and b"application/problem+json" in answer, answer
    assert b"/tmp" not in answer and str(__file__).split("/tests/")[0].encode() not in answer


def test_error_bodies_name_no_path_host_or_trace(port: int, service: SearchService, monkeypatch: pytest.MonkeyPatch):
    """An unexpected failure: no real input reaches one, so the service's ``photo`` is made to raise (the only mock)."""

    def broken(*_args, **_kwargs):
        raise RuntimeError("boom at /srv/secret/index with https://admin:pw@cluster.internal:9200")

    monkeypatch.setattr(service, "photo", broken)
    status, answer = exchange(port, request("GET", "/photos/abc", "Host: 127.0.0.1"))
    head, body = answer.split(b"\r\n\r\n", 1)
    request_id = next(line.split(b": ")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"x-request-id"))
    assert status == 500 and b"application/problem+json" in head and request_id in body
    for secret in (b"/srv/secret", b"cluster.internal", b"Traceback", b"RuntimeError", b"pw@"):
        assert secret not in answer
    status, answer = exchange(port, request("GET", "/no/such/route", "Host: 127.0.0.1"))
    assert status == 404 and b"/no/such" not in answer.split(b"\r\n\r\n", 1)[1]
    status, answer = exchange(port, request("GET", "/search?k=abc&q=x", "Host: 127.0.0.1"))
    assert status == 422 and b"pydantic.dev" not in answer and b"application/problem+json" in answer
    health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=ANSWER_S)
    assert health.json() == {"status": "ok"} and "server" not in health.headers
