"""resources/storage/locks.py's ``Wait``: when a wait for a lock reports and when it gives up, on a clock the test moves."""

from __future__ import annotations

from resources.storage.locks import REPORT_EVERY_S, Wait


def test_a_wait_reports_at_once_then_every_interval_and_gives_up_after_the_timeout():
    now = [100.0]
    wait = Wait(timeout=3 * REPORT_EVERY_S, since=90.0, clock=lambda: now[0])
    assert wait.report_due() and wait.waited == 10.0
    now[0] += REPORT_EVERY_S - 1
    assert not wait.report_due() and not wait.expired()
    now[0] += 1
    assert wait.report_due() and not wait.report_due()
    now[0] = 90.0 + 3 * REPORT_EVERY_S
    assert wait.expired()
