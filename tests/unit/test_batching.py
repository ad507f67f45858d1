"""Micro-batching of concurrent queries (resources/encoder/batching.py's MicroBatcher), made deterministic.

The model is a fake whose calls the test holds at a gate (a plain function stands in for the
encoder here: what is tested is which items reach one model call, not what a model
computes; the real encoder runs through the batcher in test_api.py). Threads queue behind a
held call; the test waits until the batcher reports them queued, opens the gate and
counts the model calls and their sizes. No timing is asserted. The real encoder through
its batchers: test_encoder_batching.py.
"""

from __future__ import annotations

import threading

import numpy as np

from resources.encoder.batching import MicroBatcher
from tests.pause import wait_until


class GatedModel:
    """Returns each item doubled, as rows; each call waits for its gate when the test holds it."""

    def __init__(self):
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail = False

    def __call__(self, items: list) -> np.ndarray:
        self.batches.append(list(items))
        self.entered.set()
        assert self.gate.wait(60), "the test never opened the gate"
        if self.fail:
            raise ValueError("the model failed")
        return np.array([[2 * i] for i in items], dtype=np.float32)


def run_in_threads(batcher: MicroBatcher, inputs: list[list[int]]) -> tuple[list[threading.Thread], dict]:
    results: dict = {}

    def call(key: int, items: list[int]) -> None:
        try:
            results[key] = batcher(items)
        except Exception as exc:  # noqa: BLE001 - the test inspects what each caller got
            results[key] = exc

    threads = [threading.Thread(target=call, args=(n, items)) for n, items in enumerate(inputs)]
    for thread in threads:
        thread.start()
    return threads, results


def hold_first_call(model: GatedModel, batcher: MicroBatcher) -> tuple[threading.Thread, dict]:
    """Start one call and hold it inside the model, so the next callers must queue."""
    model.gate.clear()
    threads, results = run_in_threads(batcher, [[100]])
    assert model.entered.wait(60)
    return threads[0], results


def test_a_lone_query_runs_at_once_whatever_the_window():
    model = GatedModel()
    batcher = MicroBatcher(model, max_batch=8, window_s=3600.0)
    assert batcher([3]).tolist() == [[6.0]]
    assert batcher([4]).tolist() == [[8.0]]
    assert model.batches == [[3], [4]]


def test_queries_that_wait_behind_a_model_call_share_the_next_one():
    model = GatedModel()
    batcher = MicroBatcher(model, max_batch=32, window_s=0.0)
    first, first_result = hold_first_call(model, batcher)
    threads, results = run_in_threads(batcher, [[i] for i in range(10)])
    wait_until(lambda: batcher.waiting == 10, "ten queries queued")
    model.gate.set()
    for thread in [first, *threads]:
        thread.join(60)
    assert first_result[0].tolist() == [[200.0]]
    assert {key: value.tolist() for key, value in results.items()} == {i: [[2.0 * i]] for i in range(10)}
    assert len(model.batches) == 2
    assert sorted(model.batches[1]) == list(range(10))
    assert batcher.stats() == {"model_calls": 2, "items": 11, "mean_batch": 5.5}


def test_a_batch_holds_at_most_max_batch_items_and_keeps_each_callers_rows_together():
    model = GatedModel()
    batcher = MicroBatcher(model, max_batch=4, window_s=0.0)
    first, _ = hold_first_call(model, batcher)
    inputs = [[1, 2], [3], [4, 5], [6], [7, 8, 9]]
    threads, results = run_in_threads(batcher, inputs)
    wait_until(lambda: batcher.waiting == len(inputs), "five callers queued")
    model.gate.set()
    for thread in [first, *threads]:
        thread.join(60)
    assert all(len(batch) <= 4 for batch in model.batches)
    assert sum(len(batch) for batch in model.batches) == 10
    for key, items in enumerate(inputs):
        assert results[key].tolist() == [[2.0 * i] for i in items]


def test_a_call_of_max_batch_items_runs_alone():
    model = GatedModel()
    batcher = MicroBatcher(model, max_batch=3, window_s=3600.0)
    assert batcher([1, 2, 3]).tolist() == [[2.0], [4.0], [6.0]]
    assert model.batches == [[1, 2, 3]]


def test_under_load_the_window_waits_for_a_full_batch():
    """With a second query waiting, the batch waits (here: an hour) until max_batch items are queued."""
    model = GatedModel()
    batcher = MicroBatcher(model, max_batch=4, window_s=3600.0)
    first, _ = hold_first_call(model, batcher)
    threads, results = run_in_threads(batcher, [[1], [2]])
    wait_until(lambda: batcher.waiting == 2, "two queued")
    model.gate.set()
    first.join(60)
    wait_until(lambda: len(model.batches) == 1 and batcher.waiting == 2, "the next batch collecting")
    more, more_results = run_in_threads(batcher, [[3], [4]])
    for thread in [*threads, *more]:
        thread.join(60)
    assert model.batches[1] == [1, 2, 3, 4]
    assert more_results[1].tolist() == [[8.0]]


def test_a_model_error_reaches_every_caller_of_the_batch_and_the_next_batch_runs():
    model = GatedModel()
    batcher = MicroBatcher(model, max_batch=8, window_s=0.0)
    first, _ = hold_first_call(model, batcher)
    threads, results = run_in_threads(batcher, [[1], [2], [3]])
    wait_until(lambda: batcher.waiting == 3, "three queued")
    model.fail = True
    model.gate.set()
    for thread in [first, *threads]:
        thread.join(60)
    assert all(isinstance(value, ValueError) for value in results.values())
    model.fail = False
    assert batcher([5]).tolist() == [[10.0]]
