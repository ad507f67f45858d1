"""The agreement gate's arithmetic: cosines, top-10 neighbours, and the disjoint samples it judges on."""

import numpy as np

from resources.encoder.gate import MIN_COSINE, judge, split_sample, top_k_overlap


def test_the_gate_needs_both_the_cosine_and_the_neighbours():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(50, 16)).astype(np.float32)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    assert judge("r", "int8", "h", reference, reference).passed
    assert top_k_overlap(reference, reference) == 1.0
    shuffled = reference[rng.permutation(50)]
    report = judge("r", "int8", "h", reference, shuffled)
    assert not report.passed and report.cosine_min < MIN_COSINE and "disagrees" in report.reason
    assert not judge("r", "int8", "h", reference[:1], reference[:1]).passed


def test_the_held_out_sample_and_the_calibration_set_never_share_a_photo():
    paths = [f"/photos/{i}.jpg" for i in range(30)]
    gate, calibration = split_sample(paths, 20, 20)
    assert not set(gate) & set(calibration) and len(calibration) == 15 and len(gate) == 15
    assert split_sample(list(reversed(paths)), 20, 20) == (gate, calibration)
    assert split_sample(paths[:1], 5, 5) == ([], paths[:1])
