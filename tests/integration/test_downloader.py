"""resources/images/downloader.py against a real HTTP server on 127.0.0.1 and real files."""

from __future__ import annotations

import socket
import threading
import uuid
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import numpy as np
import pytest
from PIL import Image, ImageFile

from resources import http_client
from resources.config import Settings
from resources.http_client import parse_retry_after
from resources.images.downloader import (
    MAX_ATTEMPTS,
    Downloader,
    FetchFailure,
    host_problem,
    is_transient,
    normalise_image,
    with_imgix_params,
)
from resources.images.image_store import ImageStore
from tests.http_fixtures import FaultServer, standard_faults
from tests.images import (
    animated_gif,
    bomb_png,
    cmyk_jpeg,
    exif_rotated_jpeg,
    jpeg_bytes,
    palette_png_transparent,
    png16,
    webp_bytes,
)


@pytest.fixture
def server():
    with FaultServer() as running:
        yield running


@pytest.fixture
def downloader(tmp_path):
    with Downloader(ImageStore(tmp_path), timeout=0.5, backoff_initial_s=0.05, backoff_max_s=0.2) as running:
        yield running


def stored(downloader: Downloader, photo_id: str) -> Image.Image:
    image = Image.open(downloader.store.path_for(photo_id))
    image.load()
    return image


def test_imgix_urls_get_the_configured_parameters_and_others_are_untouched():
    merged = with_imgix_params("https://images.unsplash.com/photo-1?ixid=abc&w=4000", "w=640&q=80&fm=jpg")
    assert merged == "https://images.unsplash.com/photo-1?ixid=abc&w=640&q=80&fm=jpg"
    assert with_imgix_params("https://example.org/a.jpg?w=4000", "w=640") == "https://example.org/a.jpg?w=4000"


def test_the_imgix_parameters_reach_the_server(tmp_path, server, monkeypatch):
    """The host check is real; only the host name is routed to the local server (a mock:
    images.unsplash.com cannot be reached from here)."""
    seen = []
    server.add("/photo-1", jpeg_bytes())
    original = Downloader._read_http

    def via_local_server(self, url):
        seen.append(url)
        return original(self, url.replace("https://images.unsplash.com", server.url("")))

    monkeypatch.setattr(Downloader, "_read_http", via_local_server)
    settings = Settings(home=tmp_path)
    with Downloader.from_settings(settings) as downloader:
        assert downloader.fetch_one("p", "https://images.unsplash.com/photo-1").ok
    assert seen == ["https://images.unsplash.com/photo-1?w=640&q=80&fm=jpg&fit=max"]


def test_retry_after_is_honoured_and_capped(tmp_path, server, monkeypatch):
    """Reads the waits the real retry policy chose (tenacity's ``idle_for``), not the clock."""
    policies = []
    real_retrying = http_client.retrying

    def recording(*args, **kwargs):
        policies.append(real_retrying(*args, **kwargs))
        return policies[-1]

    monkeypatch.setattr(http_client, "retrying", recording)
    server.add("/wait1.jpg", jpeg_bytes(), fail_first=[(429, {"Retry-After": "1"})])
    server.add("/wait-long.jpg", jpeg_bytes(), fail_first=[(503, {"Retry-After": "3600"})])
    with Downloader(ImageStore(tmp_path), backoff_initial_s=0.01, retry_after_cap_s=0.3) as downloader:
        result = downloader.fetch_one("a", server.url("/wait1.jpg"))
        assert result.ok and result.attempts == 2
        assert policies[-1].statistics["idle_for"] == pytest.approx(0.3), "Retry-After: 1 is capped at 0.3 s here"

        result = downloader.fetch_one("b", server.url("/wait-long.jpg"))
        assert result.ok and result.attempts == 2
        assert policies[-1].statistics["idle_for"] == pytest.approx(0.3), "an hour's Retry-After is capped"


def test_retry_after_parses_seconds_and_http_dates():
    assert parse_retry_after("7") == 7.0
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 <= parse_retry_after(later) <= 31
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_client_errors_are_not_retried_but_server_errors_are(downloader, server):
    server.add("/gone.jpg", b"", status=404, content_type="text/plain")
    server.add("/flaky.jpg", jpeg_bytes(), fail_first=[(502, {}), (500, {})])
    gone = downloader.fetch_one("gone", server.url("/gone.jpg"))
    flaky = downloader.fetch_one("flaky", server.url("/flaky.jpg"))
    assert (gone.reason, gone.attempts, server.hits["/gone.jpg"]) == ("http_404", 1, 1)
    assert flaky.ok and flaky.attempts == 3
    assert not is_transient("http_404") and is_transient("http_503") and is_transient("timeout")


def test_local_paths_and_file_urls(downloader, tmp_path):
    picture = tmp_path / "in dir" / "pic.png"
    picture.parent.mkdir()
    picture.write_bytes(png16())
    assert downloader.fetch_one("by-path", str(picture)).ok
    assert downloader.fetch_one("by-url", picture.as_uri()).ok
    assert downloader.fetch_one("nothing", str(tmp_path / "absent.jpg")).reason == "missing_file"
    assert downloader.fetch_one("ftp", "ftp://example.org/a.jpg").reason == "bad_url"


def test_a_plain_jpeg_is_kept_byte_for_byte_and_others_are_normalised(downloader, server):
    plain = jpeg_bytes(120, 80)
    result = downloader.fetch_one("plain", server.add("/plain.jpg", plain))
    assert result.kept_original and downloader.store.path_for("plain").read_bytes() == plain
    assert (result.width, result.height, result.bytes) == (120, 80, len(plain))

    rotated = downloader.fetch_one("rotated", server.add("/rotated.jpg", exif_rotated_jpeg()))
    assert not rotated.kept_original and stored(downloader, "rotated").size == (20, 60)
    assert stored(downloader, "rotated").getexif().get(0x0112, 1) == 1


def test_conversions_keep_the_picture(downloader, server):
    for name, body in {
        "cmyk": cmyk_jpeg(),
        "png16": png16(),
        "palette": palette_png_transparent(),
        "webp": webp_bytes(),
    }.items():
        assert downloader.fetch_one(name, server.add(f"/{name}", body)).ok, name
        assert stored(downloader, name).mode == "RGB"
    gif = downloader.fetch_one("gif", server.add("/gif", animated_gif()))
    assert gif.reason == "unsupported_format" and "only JPEG, PNG or WebP" in gif.detail, "JPEG, PNG and WebP only"
    grey = np.asarray(stored(downloader, "png16"))[:, :, 0]
    assert grey[:, 0].mean() < 5 and grey[:, -1].mean() > 245, "16-bit values are scaled, not clipped"
    assert abs(int(grey[:, 20].mean()) - 128) < 12
    assert np.asarray(stored(downloader, "palette"))[:, :15].min() > 245, "transparency becomes white"


def test_a_decompression_bomb_is_refused_from_its_header(downloader, server, monkeypatch):
    """Records which images PIL decodes (the real ``load`` still runs): the bomb must not be one."""
    decoded = []
    real_load = ImageFile.ImageFile.load

    def recording_load(image):
        decoded.append(image.size)
        return real_load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording_load)
    body = bomb_png(20_000, 20_000)
    result = downloader.fetch_one("bomb", server.add("/bomb.png", body, content_type="image/png"))
    assert result.reason == "too_many_pixels"
    assert (20_000, 20_000) not in decoded, "refused from the header, never decoded"
    with pytest.raises(FetchFailure, match="too_many_pixels"):
        normalise_image(jpeg_bytes(64, 48), max_pixels=1000)


def test_size_cap_is_checked_on_headers_and_bodies(tmp_path, server):
    big = jpeg_bytes(400, 300, seed=5)
    with Downloader(ImageStore(tmp_path), max_bytes=len(big) - 1) as downloader:
        assert downloader.fetch_one("big", server.add("/big.jpg", big)).reason == "too_large"
    assert not ImageStore(tmp_path).has("big")


def test_many_photos_concurrently_with_progress(tmp_path):
    reports, results = [], []
    with FaultServer() as server, Downloader(ImageStore(tmp_path), concurrency=32) as downloader:
        body = jpeg_bytes(64, 48)
        items = [(f"p{i}", server.add(f"/p/{i}.jpg", body)) for i in range(160)]
        server.hold()
        fetching = threading.Thread(
            target=lambda: results.extend(
                downloader.fetch_all(items, total=len(items), progress=reports.append, progress_every_s=0.05)
            )
        )
        fetching.start()
        try:
            # The server holds every request: 32 of them waiting at once shows the fetches overlap.
            server.wait_held(32)
        finally:
            server.release()
            fetching.join()
    assert sorted(r.photo_id for r in results if r.ok) == sorted(p for p, _ in items)
    final = reports[-1]
    assert (final.done, final.total, final.failed) == (160, 160, 0)
    assert final.rate > 0 and final.eta_s == 0
    assert "160/160 (100.0%) photos" in final.describe()


def test_photo_ids_cannot_escape_the_store(downloader, server):
    url = server.add("/ok.jpg", jpeg_bytes())
    for photo_id in ("../../x", "/etc/passwd", "", "a/b", "..", "x" * 300):
        assert downloader.fetch_one(photo_id, url).ok, photo_id
        path = downloader.store.path_for(photo_id).resolve()
        assert downloader.store.root.resolve() in path.parents
    assert len({downloader.store.path_for(p) for p in ("../../x", "..%2F..%2Fx", "x")}) == 3


def test_every_standard_fault_ends_as_expected_with_retries_only_where_they_can_help(downloader, server):
    cases = standard_faults(server, timeout_s=0.5)
    results = {r.photo_id: r for r in downloader.fetch_all([(case.name, server.url(case.path)) for case in cases])}
    for case in cases:
        assert results[case.name].reason == case.reason, case.name
        if case.reason is not None and not is_transient(case.reason) and case.name != "redirect_loop":
            assert server.hits[case.path] == 1, f"{case.name} is not worth a second request"
    assert server.hits["/faults/always_500.jpg"] == 4 and results["always_500"].attempts == 4
    assert server.hits["/faults/redirect_loop.jpg"] == 6, "the first request and five redirects"
    assert not list(downloader.store.root.rglob("*.tmp"))


def test_a_host_that_cannot_be_a_web_host_fails_for_good_without_a_lookup(downloader, monkeypatch):
    """Hosts from unsplash/datasets issue 46: a file name glued onto the host name."""
    lookups = []
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: lookups.append(host) or real(host, *a, **k))
    for url in (
        "https://images.unsplash.com.jpg/",
        "https://images.unsplash.com_thebeach.jpg/",
        "https://images.unsplash.come-home.jpg/x",
    ):
        result = downloader.fetch_one("broken", url)
        assert (result.reason, result.attempts) == ("bad_host", 1), url
        assert "'jpg' is not a top-level domain" in result.detail
    assert lookups == [] and not is_transient("bad_host")
    for name in (
        "localhost",
        "minio",
        "images.svc.cluster.local",
        "10.0.0.7",
        "images.unsplash.com",
        "images.unsplash.company",
    ):
        assert host_problem(name) is None, name


@pytest.fixture
def one_public_name(monkeypatch, server):
    """``images.example.com`` resolves to the local server; every other name goes to the real resolver.

    A stand-in for DNS, which cannot run here: this machine's resolver answers "not known"
    for every internet name, as any machine without network does. The HTTP exchange after
    the lookup is real.
    """
    real = socket.getaddrinfo

    def resolve(host, port, *args, **kwargs):
        return real("127.0.0.1" if host == "images.example.com" else host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return server.url("/").replace("127.0.0.1", "images.example.com")


def test_a_name_that_does_not_resolve_is_permanent_only_when_other_hosts_do(tmp_path, server, one_public_name):
    missing = f"http://no-such-host-{uuid.uuid4().hex}.com/photo.jpg"
    good = one_public_name + "good.jpg"
    server.add("/good.jpg", jpeg_bytes())
    options = dict(concurrency=1, timeout=0.5, backoff_initial_s=0.01, backoff_max_s=0.02)

    with Downloader(ImageStore(tmp_path / "outage"), **options) as downloader:
        alone = {
            r.photo_id: r for r in downloader.fetch_all([("missing", missing), ("local", server.url("/good.jpg"))])
        }
    assert alone["local"].ok, "127.0.0.1 answering says nothing about DNS"
    assert alone["missing"].reason == "dns_unavailable" and is_transient("dns_unavailable")
    assert alone["missing"].attempts == MAX_ATTEMPTS, "retried: DNS may come back"

    with Downloader(ImageStore(tmp_path / "working"), **options) as downloader:
        # The missing host fails first, before any internet host answered: the verdict waits for the run's end.
        both = {r.photo_id: r for r in downloader.fetch_all([("missing", missing), ("good", good)])}
        assert both["good"].ok
        assert both["missing"].reason == "unresolvable_host" and not is_transient("unresolvable_host")
        again = downloader.fetch_one("again", missing)
        assert (again.reason, again.attempts) == ("unresolvable_host", 1), "once DNS is known to work, no retries"
