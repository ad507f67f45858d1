"""Notifications of new matches, POSTed to a real HTTP server on 127.0.0.1 that fails as receivers do."""

from __future__ import annotations

import logging

from resources.saved import notify
from tests.http_fixtures import PostServer

NEW = [
    {"photo_id": "p1", "score": 0.91, "photo_url": "https://unsplash.com/photos/p1", "image_url": "https://i/p1.jpg"}
]


def test_new_matches_reach_the_receiver_after_its_failures():
    with PostServer() as server:
        url = server.add("/hook", fail_first=[(503, {}), (429, {"Retry-After": "0"})])
        assert notify.post(url, notify.payload("red circles", "b2", NEW), initial_s=0.01)
        assert server.hits["/hook"] == 3
        assert server.posted == [{"type": "application/json", "search": "red circles", "build": "b2", "new": NEW}]


def test_a_receiver_that_keeps_failing_costs_one_warning_and_no_error(caplog):
    with PostServer() as server:
        url = server.add("/down", fail_first=[(500, {})] * 10)
        refused = server.add("/refused", status=403)
        with caplog.at_level(logging.WARNING):
            assert not notify.post(url + "?token=secret", notify.payload("s", "b", NEW), attempts=3, initial_s=0.01)
            assert not notify.post(refused, notify.payload("s", "b", NEW), initial_s=0.01)
        assert server.hits["/down"] == 3 and server.hits["/refused"] == 1
    lines = [r.getMessage() for r in caplog.records]
    assert "not delivered after 3 attempts (HTTP 500)" in lines[0] and "secret" not in lines[0]
    assert "refused with HTTP 403" in lines[1]


def test_no_server_listening_is_a_warning_too(caplog):
    with PostServer() as server:
        url = server.url("/gone")
    with caplog.at_level(logging.WARNING):
        assert not notify.post(url, notify.payload("s", "b", NEW), attempts=2, initial_s=0.01)
    assert "not delivered after 2 attempts" in caplog.records[0].getMessage()
