"""Concurrent query calls merged into one model call (:class:`MicroBatcher`), for an HTTP API under load."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Sequence

import numpy as np


class _Pending:
    """One caller's items waiting in a :class:`MicroBatcher`, and then its rows or its error."""

    __slots__ = ("items", "rows", "error", "done")

    def __init__(self, items: list):
        self.items = items
        self.rows: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = False


class MicroBatcher:
    """Runs concurrent calls of ``run(items) -> rows`` as one call over all their items.

    No thread of its own: the first caller to find the model idle runs a batch (the queue's
    oldest requests, up to ``max_batch`` items) while later callers queue; when it is done
    the next waiting caller runs the next batch. A lone caller runs at once. The window
    opens only under load, when a second request is already waiting or the previous batch
    held more than one: then the batch waits up to ``window_s`` for more, or until it holds
    ``max_batch`` items. Calls of ``max_batch`` items or more run alone, directly. An error
    from ``run`` reaches every caller of that batch.
    """

    def __init__(self, run: Callable[[list], np.ndarray], max_batch: int = 32, window_s: float = 0.002):
        self._run = run
        self.max_batch = max_batch
        self.window_s = window_s
        self._cond = threading.Condition()
        self._queue: deque[_Pending] = deque()
        self._busy = False
        self._last_batch = 0
        #: Model calls made and the items they held, for the API's info and the benchmark.
        self.calls = 0
        self.items = 0

    @property
    def waiting(self) -> int:
        """Requests queued and not yet taken into a batch."""
        with self._cond:
            return len(self._queue)

    def stats(self) -> dict[str, Any]:
        """Model calls, items and the mean batch so far."""
        with self._cond:
            mean = self.items / self.calls if self.calls else 0.0
            return {"model_calls": self.calls, "items": self.items, "mean_batch": round(mean, 2)}

    def __call__(self, items: Sequence) -> np.ndarray:
        """The rows of ``items``, computed in one model call with whatever else is waiting."""
        request = _Pending(list(items))
        if len(request.items) >= self.max_batch:
            rows = self._run(request.items)
            with self._cond:
                self.calls += 1
                self.items += len(request.items)
            return rows
        with self._cond:
            self._queue.append(request)
            self._cond.notify_all()
            while not request.done:
                if self._busy:
                    self._cond.wait()
                    continue
                self._busy = True
                batch = self._collect()
                self._cond.release()
                try:
                    self._run_batch(batch)
                finally:
                    self._cond.acquire()
                    self._busy = False
                    self._cond.notify_all()
        if request.error is not None:
            raise request.error
        return request.rows

    def _queued_items(self) -> int:
        return sum(len(p.items) for p in self._queue)

    def _collect(self) -> list[_Pending]:
        """The next batch, taken from the queue (the lock is held; waiting releases it)."""
        if self.window_s > 0 and (len(self._queue) > 1 or self._last_batch > 1):
            deadline = time.monotonic() + self.window_s
            while self._queued_items() < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
        batch, size = [], 0
        while self._queue and size + len(self._queue[0].items) <= self.max_batch:
            size += len(self._queue[0].items)
            batch.append(self._queue.popleft())
        self._last_batch = len(batch)
        self.calls += 1
        self.items += size
        return batch

    def _run_batch(self, batch: list[_Pending]) -> None:
        try:
            rows = self._run([item for pending in batch for item in pending.items])
            start = 0
            for pending in batch:
                pending.rows = rows[start : start + len(pending.items)]
                start += len(pending.items)
        except BaseException as exc:  # noqa: BLE001 - every caller of the batch gets the model's error
            for pending in batch:
                pending.error = exc
        finally:
            for pending in batch:
                pending.done = True
