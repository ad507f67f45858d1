"""``image-search api`` as a user runs it: a real server process on 127.0.0.1 (and one beyond loopback, with a key)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.cli import clean_env, image_search

KEY = "e2e-" + "0123456789abcdef" * 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(home: Path, *args: str, key: str | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = clean_env(IMAGE_SEARCH_HOME=home, OMP_NUM_THREADS="1")
    if key:
        env["IMAGE_SEARCH_API_KEY"] = key
    process = subprocess.Popen(
        [sys.executable, "-m", "image_search.cli", "api", "--port", str(port), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process, port


def wait_serving(process: subprocess.Popen, port: int, headers: dict | None = None) -> None:
    """Until the server answers /health (it warms the models first) or its process ends."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited {process.returncode}: {process.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", headers=headers, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server never answered /health")


def stop(process: subprocess.Popen) -> str:
    process.terminate()
    out, _ = process.communicate(timeout=30)
    return out


def test_a_real_server_on_loopback_answers_searches_and_survives_bad_uploads(search_home: Path):
    import pandas as pd

    from resources.images.image_store import ImageStore

    catalog = pd.read_parquet(search_home / "catalog" / "catalog.parquet")
    photo_id = catalog["photo_id"].iloc[0]
    process, port = start(search_home)
    try:
        wait_serving(process, port)
        base = f"http://127.0.0.1:{port}"
        text = httpx.get(f"{base}/search", params={"q": "a red car", "k": 3})
        assert text.status_code == 200 and len(text.json()["results"]) == 3
        image = ImageStore(search_home / "images").path_for(photo_id).read_bytes()
        upload = httpx.post(
            f"{base}/search/image",
            files={"image": ("x.jpg", image, "image/jpeg")},
            data={"k": "2", "hide_duplicates": "false"},
            timeout=60,
        )
        assert upload.json()["results"][0]["photo_id"] == photo_id
        bad = httpx.post(f"{base}/search/image", files={"image": ("x.jpg", b"GIF89a broken", "image/gif")})
        assert bad.status_code == 415 and bad.headers["content-type"] == "application/problem+json"
        broken = httpx.post(f"{base}/search/image", files={"image": ("x.jpg", b"\xff\xd8\xff broken", "image/jpeg")})
        assert broken.status_code == 400 and "cannot use the uploaded image" in broken.json()["detail"]
        huge = httpx.post(
            f"{base}/search/image",
            content=b"\0" * (51 * 1024 * 1024),
            headers={"content-type": "multipart/form-data; boundary=b"},
            timeout=60,
        )
        assert huge.status_code == 413 and "larger than 50 MB" in huge.json()["detail"]
        assert httpx.get(f"{base}/photos/{photo_id}").json()["photo_id"] == photo_id
        assert httpx.get(f"{base}/search", params={"q": "still serving"}).status_code == 200
    finally:
        stop(process)


def test_beyond_loopback_it_refuses_to_start_without_a_key_and_enforces_one(search_home: Path):
    refused = image_search(
        "api",
        "--host",
        "0.0.0.0",
        "--port",
        str(free_port()),
        env=clean_env(IMAGE_SEARCH_HOME=search_home),
        timeout=120,
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "image-search: refusing to serve the API on 0.0.0.0 without a key: set IMAGE_SEARCH_API_KEY "
        "(callers send it as X-API-Key), or listen on 127.0.0.1"
    ]

    process, port = start(search_home, "--host", "0.0.0.0", key=KEY)
    try:
        wait_serving(process, port)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/search", params={"q": "dog"}).status_code == 401
        assert httpx.get(f"{base}/search", params={"q": "dog"}, headers={"X-API-Key": "wrong" * 8}).status_code == 401
        assert httpx.get(f"{base}/search", params={"q": "dog"}, headers={"X-API-Key": KEY}).status_code == 200
    finally:
        out = stop(process)
    assert KEY not in out
