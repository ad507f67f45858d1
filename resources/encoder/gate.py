"""The agreement gate: a faster image runtime is used only where its vectors agree with PyTorch fp32's.

Both encode the same held-out sample of the user's own photos (disjoint from the
calibration set). The runtime passes when every vector's cosine with fp32's is at least
:data:`MIN_COSINE` and, on that sample, each photo's 10 nearest photos overlap fp32's by
at least :data:`MIN_TOP10_OVERLAP` on average. The thresholds are the contract with the
index: vectors that pass are interchangeable with fp32's, so the store keeps them when
the runtime changes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from resources.storage.files import write_text

MIN_COSINE = 0.99
MIN_TOP10_OVERLAP = 0.9
NEIGHBOURS = 10


@dataclass(frozen=True)
class GateReport:
    """The gate's figures and verdict for one runtime and precision on one model."""

    runtime: str
    precision: str
    model_hash: str
    sample: int
    cosine_min: float
    cosine_mean: float
    top10_overlap: float
    passed: bool
    reason: str
    #: :func:`~resources.encoder.runtime.ir_digest` of the build judged, and where it was judged
    #: (:func:`~resources.encoder.selection.judging_environment`): the verdict is about those only.
    model_digest: str = ""
    judged_on: str = ""

    def save(self, path: Path) -> None:
        """Write the report as JSON (atomically: a reader never sees half of it)."""
        write_text(path, json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, path: Path) -> "GateReport | None":
        """The report saved at ``path``, or ``None`` when there is none, it is unreadable or a field has the wrong type."""
        try:
            report = cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError):
            return None
        kinds = {"str": str, "int": int, "float": (int, float), "bool": bool}
        if any(not isinstance(getattr(report, field.name), kinds[field.type]) for field in fields(cls)):
            return None
        return report


def top_k_overlap(reference: np.ndarray, candidate: np.ndarray, k: int = NEIGHBOURS) -> float:
    """Mean share of each row's ``k`` nearest other rows (by cosine) that both sets of vectors agree on."""
    n = len(reference)
    k = min(k, n - 1)
    if k < 1:
        return 1.0

    def neighbours(vectors: np.ndarray) -> np.ndarray:
        scores = vectors @ vectors.T
        np.fill_diagonal(scores, -np.inf)
        return np.argpartition(-scores, k - 1, axis=1)[:, :k]

    ref, cand = neighbours(reference), neighbours(candidate)
    return float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(ref, cand)]))


def judge(runtime: str, precision: str, model_hash: str, reference: np.ndarray, candidate: np.ndarray) -> GateReport:
    """Compare ``candidate``'s unit rows with fp32's ``reference`` rows of the same photos and give the verdict."""
    if len(reference) < 2:
        return GateReport(
            runtime,
            precision,
            model_hash,
            len(reference),
            0.0,
            0.0,
            0.0,
            False,
            "fewer than 2 stored photos to compare on: store more photos first",
        )
    cosines = np.sum(reference * candidate, axis=1)
    cos_min, overlap = float(cosines.min()), top_k_overlap(reference, candidate)
    passed = cos_min >= MIN_COSINE and overlap >= MIN_TOP10_OVERLAP
    reason = (
        "agrees with PyTorch fp32"
        if passed
        else f"disagrees with PyTorch fp32 (needs cosine_min >= {MIN_COSINE} and top10_overlap >= {MIN_TOP10_OVERLAP})"
    )
    return GateReport(
        runtime,
        precision,
        model_hash,
        len(reference),
        round(cos_min, 5),
        round(float(cosines.mean()), 5),
        round(overlap, 4),
        passed,
        reason,
    )


def split_sample(paths: list[str], held_out: int, calibration: int) -> tuple[list[str], list[str]]:
    """A deterministic held-out sample and a disjoint calibration set from ``paths`` (by a hash of each path).

    With fewer photos than both want, the calibration set gets at most half of them and
    the held-out sample the rest, so the two never share a photo.
    """
    ordered = sorted(set(paths), key=lambda p: hashlib.sha256(p.encode()).hexdigest())
    calibrate = min(calibration, max(1, len(ordered) // 2)) if ordered else 0
    gate = ordered[: min(held_out, len(ordered) - calibrate)]
    return gate, ordered[len(gate) : len(gate) + calibrate]
