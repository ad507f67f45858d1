"""resources/http_client.py: TLS verified, secrets never shown, and one meaning of "changed", against real servers on 127.0.0.1."""

from __future__ import annotations

import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trustme

from resources import http_client
from resources.errors import ImageSearchError
from resources.http_client import Validators
from resources.release.source import download
from tests.http_fixtures import CollectingLog


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_HEAD(self):  # noqa: N802 - the base class's naming
        self.send_response(200)
        self.send_header("Content-Length", "4")
        self.end_headers()

    def do_GET(self):  # noqa: N802 - the base class's naming
        self.do_HEAD()
        self.wfile.write(b"data")


@pytest.fixture
def https_url():
    """An HTTPS server whose certificate a throwaway CA signed: valid, but trusted by no one here."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{httpd.server_address[1]}/release.zip"
    httpd.shutdown()
    httpd.server_close()


def test_tls_certificates_are_verified(https_url, tmp_path):
    with pytest.raises(http_client.RequestFailed, match="SSLError"):
        http_client.head(https_url, timeout=5)
    with pytest.raises(ImageSearchError, match="CERTIFICATE_VERIFY_FAILED"):
        download(https_url, tmp_path, timeout=5, log=CollectingLog(), attempts=1)
    assert not list(tmp_path.glob("*.zip"))


def test_credentials_in_a_url_are_never_shown(tmp_path):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    log = CollectingLog()
    with pytest.raises(ImageSearchError) as failure:
        download(f"http://alice:s3cret@127.0.0.1:{port}/release.zip", tmp_path, timeout=5, log=log, attempts=2)
    shown = str(failure.value) + "\n".join(log.lines)
    assert "failed 2 times" in shown and "***:***@127.0.0.1" in shown
    assert "s3cret" not in shown and "alice" not in shown


def test_signatures_in_a_signed_url_are_never_shown(tmp_path):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    signed = (
        f"http://127.0.0.1:{port}/lite.zip?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20261202"
        "&X-Amz-Expires=3600&X-Amz-Signature=f00dfeed&token=t0ken"
    )
    log = CollectingLog()
    with pytest.raises(ImageSearchError) as failure:
        download(signed, tmp_path, timeout=5, log=log, attempts=2)
    shown = str(failure.value) + "\n".join(log.lines)
    assert "X-Amz-Signature=***" in shown and "X-Amz-Expires=3600" in shown
    assert not [secret for secret in ("f00dfeed", "AKIAEXAMPLE", "t0ken") if secret in shown]


def test_a_file_has_changed_when_any_validator_differs_or_none_is_known():
    seen = Validators("https://host/lite.zip", etag='"v1"', last_modified="Tue, 01 Sep 2026 00:00:00 GMT", length="10")
    assert not seen.changed_from(Validators(**seen.as_dict()))
    assert Validators(**{**seen.as_dict(), "last_modified": "Thu, 01 Oct 2026 00:00:00 GMT"}).changed_from(seen)
    assert Validators(**{**seen.as_dict(), "url": "https://host/lite-1.4.1.zip"}).changed_from(seen)
    nothing = Validators("https://host/lite.zip")
    assert not nothing.known and nothing.changed_from(nothing), "with nothing to compare, only a download can tell"
    assert seen.changed_from(None) and seen.changed_from(Validators.from_dict({"etag": "x"}))
    assert seen.if_range == '"v1"' and Validators("u", etag='W/"v1"', last_modified="d").if_range == "d"
