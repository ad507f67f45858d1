"""POST a saved search's new matches to ``IMAGE_SEARCH_NOTIFY_URL``; retried with backoff, never raising.

A notification is a courtesy: a refresh that found new photos has done its work whether or
not the receiver answers, so every failure ends as one logged line and ``False``. The one
HTTP client (:mod:`resources.http_client`) sends it, TLS verified, with its retry policy.
A receiver is trusted with nothing more: a redirect is not followed (it would carry the
POST and its credentials elsewhere; OWASP API7:2023), its answer's body is never read,
and logs name only its scheme, host and port (a webhook's path or query is often its secret).
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from urllib3.exceptions import HTTPError
from urllib3.util import make_headers

from resources import http_client

log = logging.getLogger(__name__)

ATTEMPTS = 4
TIMEOUT_S = 10.0


def payload(name: str, build: str, new: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON sent: the search's name, the build, and each new photo's id, score and links."""
    keys = ("photo_id", "score", "photo_url", "image_url")
    return {"search": name, "build": build, "new": [{key: entry.get(key) for key in keys} for entry in new]}


def post(
    url: str,
    body: dict[str, Any],
    *,
    attempts: int = ATTEMPTS,
    timeout: float = TIMEOUT_S,
    initial_s: float = http_client.BACKOFF_INITIAL_S,
    logger=log,
) -> bool:
    """POST ``body`` as JSON to ``url``; True when it was taken (2xx), else False after one warning."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    shown = f"{parts.scheme}://{host}"
    headers = {"Content-Type": "application/json"}
    if parts.username is not None:
        headers |= make_headers(basic_auth=f"{unquote(parts.username)}:{unquote(parts.password or '')}")
        url = urlunsplit(parts._replace(netloc=host))
    manager = http_client.pool(timeout=timeout, accept="application/json")
    data = json.dumps(body, ensure_ascii=False).encode("utf-8")

    def attempt() -> int:
        try:
            response = manager.request("POST", url, body=data, headers=headers, redirect=False, preload_content=False)
        except (HTTPError, OSError) as exc:
            raise http_client.Transient(type(http_client.cause(exc)).__name__) from None
        response.close()
        if response.status in http_client.RETRY_STATUSES:
            raise http_client.Transient(
                f"HTTP {response.status}", http_client.parse_retry_after(response.headers.get("Retry-After"))
            )
        return response.status

    try:
        status = http_client.retrying(attempts, initial_s=initial_s, max_s=max(initial_s, 4.0))(attempt)
    except http_client.Transient as exc:
        logger.warning(f"notification to {shown} not delivered after {attempts} attempts ({exc}); the refresh goes on")
        return False
    except ValueError as exc:
        logger.warning(f"notification to {shown} not sent: {exc}; check IMAGE_SEARCH_NOTIFY_URL")
        return False
    finally:
        manager.clear()
    if not 200 <= status < 300:
        logger.warning(f"notification to {shown} refused with HTTP {status}; the refresh goes on")
        return False
    return True
