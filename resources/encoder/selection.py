"""Choosing the image runtime: build the faster one from the user's model and photos, gate it, or fall back.

At first use the faster runtime is built from the sentence-transformers model, calibrated
on a few hundred of the user's stored photos, and judged by the agreement gate
(:mod:`resources.encoder.gate`) on a disjoint held-out sample against PyTorch fp32. The
build and its verdict are cached under ``<runtimes_dir>/<model content hash>/<runtime>-<precision>/``,
so a changed model (another hash) builds and judges again, and an unchanged one neither.
A runtime that disagrees, or cannot be built, leaves the encoder on PyTorch at its best
precision; the report says why.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from resources.encoder.decode import Preprocess, load_prepared
from resources.encoder.gate import GateReport, judge, split_sample
from resources.encoder.runtime import OpenVinoRuntime, TorchRuntime, build_openvino
from resources.errors import ImageSearchError

log = logging.getLogger(__name__)

#: The faster runtime and the precision it is built in.
FAST = ("openvino", "int8")
GATE_FILE = "gate.json"
MODEL_FILE = "model.xml"


def openvino_available() -> bool:
    """Whether OpenVINO and NNCF import here."""
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_runtime(setting: str, device: str) -> str:
    """``auto``: OpenVINO on a CPU where it is installed, PyTorch otherwise; a named runtime must be able to run."""
    if setting == "auto":
        return FAST[0] if device == "cpu" and openvino_available() else "torch"
    if setting == "openvino" and device != "cpu":
        raise ImageSearchError(f"IMAGE_SEARCH_RUNTIME=openvino runs on the CPU, not {device}: set it to torch or auto")
    if setting == "openvino" and not openvino_available():
        raise ImageSearchError(
            "IMAGE_SEARCH_RUNTIME=openvino but openvino or nncf is not installed: reinstall the project, or set it to torch"
        )
    return setting


def prepared_pixels(paths: Sequence[str], pre: Preprocess, workers: int) -> np.ndarray:
    """The model input of every decodable file in ``paths``, stacked (undecodable files are left out)."""

    def one(path: str):
        try:
            return load_prepared(path, pre)
        except Exception:  # noqa: BLE001 - a photo that cannot be decoded is simply not in the sample
            return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        arrays = [a for a in pool.map(one, paths) if a is not None]
    return np.stack(arrays) if arrays else np.zeros((0, pre.crop, pre.crop, 3), np.uint8)


def _encode(runtime, pixels: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([runtime(pixels[i : i + batch]) for i in range(0, len(pixels), batch)])


def build_and_judge(clip, pre: Preprocess, folder: Path, model_hash: str, gate: np.ndarray, calibration: np.ndarray):
    """Build the faster runtime into ``folder`` from ``calibration``, judge it on ``gate`` and save the verdict.

    Returns the runtime (``None`` when it could not be built) and the report. The verdict
    is cached only when the runtime was built and judged on at least two photos.
    """
    runtime, reference = None, _encode(TorchRuntime(clip, pre, "cpu", "fp32"), gate) if len(gate) else gate
    try:
        if len(calibration) == 0:
            raise ImageSearchError("no decodable stored photo to calibrate on")
        build_openvino(clip, pre, calibration, folder / MODEL_FILE)
        runtime = OpenVinoRuntime(folder / MODEL_FILE, FAST[1])
        report = judge(*FAST, model_hash, reference, _encode(runtime, gate) if len(gate) else gate)
    except Exception as exc:  # noqa: BLE001 - any build failure means "stay on PyTorch", with the reason
        log.warning("could not build the %s image runtime: %s", FAST[0], exc)
        reason = f"could not be built: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        report = GateReport(*FAST, model_hash, len(gate), 0.0, 0.0, 0.0, False, reason)
    if runtime is not None and len(gate) >= 2:
        # Only a verdict on enough photos is kept; a failed build or too few photos try again next run.
        report.save(folder / GATE_FILE)
    return runtime, report


def select(encoder, sample_paths: Sequence[str], held_out: int, calibration: int) -> GateReport | None:
    """Set ``encoder.image_runtime`` to the runtime its settings and the gate allow; the gate's report, if any.

    ``sample_paths`` are the user's stored photos to split into a held-out sample and a
    calibration set (used only when nothing for this model is cached yet).
    """
    name = resolve_runtime(encoder.runtime_setting, encoder.device)
    torch_runtime = TorchRuntime(encoder.clip, encoder.preprocess, encoder.device, encoder.precision)
    encoder.image_runtime = torch_runtime
    if name == "torch":
        return None
    folder = encoder.runtimes_dir / encoder.model_hash / f"{FAST[0]}-{FAST[1]}"
    report, runtime = GateReport.read(folder / GATE_FILE), None
    if report is not None and report.passed and not (folder / MODEL_FILE).is_file():
        report = None  # the build was deleted: build and judge again
    if report is not None and report.passed:
        runtime = OpenVinoRuntime(folder / MODEL_FILE, FAST[1])
    elif report is None:
        pre = encoder.preprocess
        gate_paths, calibration_paths = split_sample([str(p) for p in sample_paths], held_out, calibration)
        log.info(
            "building the %s image runtime: %d photos to calibrate on, %d held out for the gate",
            FAST[0],
            len(calibration_paths),
            len(gate_paths),
        )
        runtime, report = build_and_judge(
            encoder.clip,
            pre,
            folder,
            encoder.model_hash,
            prepared_pixels(gate_paths, pre, encoder.decode_workers),
            prepared_pixels(calibration_paths, pre, encoder.decode_workers),
        )
    if report.passed and runtime is not None:
        encoder.image_runtime = runtime
    else:
        log.warning("image runtime %s-%s not used (%s): PyTorch %s encodes", *FAST, report.reason, encoder.precision)
    return report


def agreeing_runtimes(runtimes_dir: Path, model_hash: str) -> set[tuple[str, str]]:
    """The (runtime, precision) pairs whose gate passed for this model; PyTorch's are the reference, always agreeing."""
    passed = set()
    for path in (Path(runtimes_dir) / model_hash).glob(f"*/{GATE_FILE}"):
        report = GateReport.read(path)
        if report is not None and report.passed:
            passed.add((report.runtime, report.precision))
    return passed
