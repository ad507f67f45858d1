"""Choosing the image runtime: build the faster one from the user's model and photos, gate it, or fall back.

At first use the faster runtime is built from the sentence-transformers model, calibrated
on a few hundred of the user's stored photos, and judged by the agreement gate
(:mod:`resources.encoder.gate`) on a disjoint held-out sample against PyTorch fp32. The
build and its verdict are cached under ``<runtimes_dir>/<model content hash>/<runtime>-<precision>/``,
so a changed model (another hash) builds and judges again, and an unchanged one neither.
A verdict vouches only for the model hash, the build's bytes (a digest) and the kind of
CPU it was judged on (:func:`judging_environment`): other bytes are built anew, another
CPU judges the same build again, so a shared home never runs a build nobody judged there.
A runtime that disagrees, or cannot be built, leaves the encoder on PyTorch at its best
precision; the report says why.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from resources.encoder.decode import Preprocess, load_prepared
from resources.encoder.gate import GateReport, judge, split_sample
from resources.encoder.runtime import OpenVinoRuntime, TorchRuntime, build_openvino, inference_hint, ir_digest, read_ir
from resources.errors import ImageSearchError

log = logging.getLogger(__name__)

#: The faster runtime and the precision it is built in.
FAST = ("openvino", "int8")
#: The verdicts, one per kind of CPU (:func:`gate_file`).
GATE_GLOB = "gate-*.json"
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


def judging_environment() -> str:
    """What besides the build decides the int8 vectors' numerics here: OpenVINO's version, the float precision, the ISA.

    OpenVINO picks its int8 and bf16 kernels by the CPU's matrix instructions (AMX,
    AVX-512 VNNI, AVX2) and computes the float layers in bf16 only where the CPU has it,
    so a verdict judged on one CPU says nothing about another sharing the home.
    """
    import openvino as ov

    from resources.encoder.devices import cpu_info

    return f"openvino {ov.__version__}|{inference_hint()}|{','.join(cpu_info().flags)}"


def gate_file(folder: Path, environment: str) -> Path:
    """The verdict of the build in ``folder`` judged in ``environment`` (one file per kind of CPU sharing the home)."""
    return folder / f"gate-{hashlib.sha256(environment.encode()).hexdigest()[:12]}.json"


def _vouches(report: GateReport | None, folder: Path, model_hash: str) -> bool:
    """Whether ``report`` is a verdict about a build of this model and the runtime ``folder`` is named after."""
    return (
        report is not None and report.model_hash == model_hash and folder.name == f"{report.runtime}-{report.precision}"
    )


def cached_build(folder: Path, model_hash: str) -> tuple[tuple[bytes, bytes] | None, list[GateReport]]:
    """The cached build's bytes and the verdicts of this model about exactly those bytes.

    A build no verdict vouches for (half written, replaced by another writer, truncated,
    unreadable, a verdict copied from another model's folder) is ``None``: build anew.
    """
    reports = [r for r in map(GateReport.read, folder.glob(GATE_GLOB)) if _vouches(r, folder, model_hash)]
    if not reports:
        return None, []
    try:
        ir = read_ir(folder / MODEL_FILE)
    except OSError as exc:
        log.warning("the cached %s image runtime cannot be read (%s): building it again", folder.name, exc)
        return None, []
    digest = ir_digest(ir)
    reports = [r for r in reports if r.model_digest == digest]
    if not reports:
        log.warning("no verdict is about the files now in %s (replaced or half written): building again", folder)
    return (ir if reports else None), reports


def judge_here(clip, pre: Preprocess, ir: tuple[bytes, bytes], model_hash: str, gate: np.ndarray):
    """Compile ``ir``, judge it on ``gate`` against PyTorch fp32 here; the runtime and the report (with digest and environment)."""
    runtime = OpenVinoRuntime(ir, FAST[1])
    reference = _encode(TorchRuntime(clip, pre, "cpu", "fp32"), gate) if len(gate) else gate
    report = judge(*FAST, model_hash, reference, _encode(runtime, gate) if len(gate) else gate)
    return runtime, replace(report, model_digest=ir_digest(ir), judged_on=judging_environment())


def build_and_judge(clip, pre: Preprocess, folder: Path, model_hash: str, gate: np.ndarray, calibration, ir=None):
    """Judge ``ir`` (or, with none, build the faster runtime into ``folder`` from ``calibration``) on ``gate``; save the verdict.

    Returns the runtime (``None`` when it could not be built) and the report. The verdict
    is cached only when the runtime was built and judged on at least two photos; a verdict
    that cannot be written (a full disk) is used for this run only.
    """
    runtime = None
    try:
        if ir is None:
            if len(calibration) == 0:
                raise ImageSearchError("no decodable stored photo to calibrate on")
            ir = build_openvino(clip, pre, calibration, folder / MODEL_FILE)
        runtime, report = judge_here(clip, pre, ir, model_hash, gate)
    except Exception as exc:  # noqa: BLE001 - any build failure means "stay on PyTorch", with the reason
        log.warning("could not build the %s image runtime: %s", FAST[0], exc)
        reason = f"could not be built: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        report = GateReport(*FAST, model_hash, len(gate), 0.0, 0.0, 0.0, False, reason)
    if runtime is not None and len(gate) >= 2:
        # Only a verdict on enough photos is kept; a failed build or too few photos try again next run.
        try:
            report.save(gate_file(folder, report.judged_on))
        except OSError as exc:
            log.warning("could not save the image runtime's verdict (%s): it is judged again next run", exc)
    return runtime, report


def select(encoder, sample_paths: Sequence[str], held_out: int, calibration: int) -> GateReport | None:
    """Set ``encoder.image_runtime`` to the runtime its settings and the gate allow; the gate's report, if any.

    ``sample_paths`` are the user's stored photos to split into a held-out sample and a
    calibration set. A build some verdict vouches for is judged here when no verdict from
    this kind of CPU exists yet; one none vouches for is built anew.
    """
    name = resolve_runtime(encoder.runtime_setting, encoder.device)
    encoder.image_runtime = TorchRuntime(encoder.clip, encoder.preprocess, encoder.device, encoder.precision)
    if name == "torch":
        return None
    folder = encoder.runtimes_dir / encoder.model_hash / f"{FAST[0]}-{FAST[1]}"
    ir, verdicts = cached_build(folder, encoder.model_hash)
    report = next((r for r in verdicts if r.judged_on == judging_environment()), None)
    runtime = None
    if link := next((p for p in (folder.parent, folder) if p.is_symlink()), None):
        # A link planted here would take the build's writes, and its sweep, to another folder.
        report = GateReport(
            *FAST,
            encoder.model_hash,
            0,
            0.0,
            0.0,
            0.0,
            False,
            f"{link} is a symbolic link, not a folder: remove it to build the runtime there",
        )
    elif report is not None and report.passed:
        runtime = OpenVinoRuntime(ir, FAST[1])
    elif report is None:
        pre = encoder.preprocess
        gate_paths, calibration_paths = split_sample([str(p) for p in sample_paths], held_out, calibration)
        log.info(
            "%s the %s image runtime: %d photos to calibrate on, %d held out for the gate",
            "judging" if ir else "building",
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
            None if ir else prepared_pixels(calibration_paths, pre, encoder.decode_workers),
            ir,
        )
    if report.passed and runtime is not None:
        encoder.image_runtime = runtime
    else:
        log.warning("image runtime %s-%s not used (%s): PyTorch %s encodes", *FAST, report.reason, encoder.precision)
    return report


def agreeing_runtimes(runtimes_dir: Path, model_hash: str) -> set[tuple[str, str]]:
    """The (runtime, precision) pairs whose gate passed for this model; PyTorch's are the reference, always agreeing."""
    passed = set()
    for path in (Path(runtimes_dir) / model_hash).glob(f"*/{GATE_GLOB}"):
        report = GateReport.read(path)
        if _vouches(report, path.parent, model_hash) and report.passed:
            passed.add((report.runtime, report.precision))
    return passed
