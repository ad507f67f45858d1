"""The multilingual text model on ONNX Runtime: the same float32 vectors, faster on a CPU.

A query is one short text, so PyTorch's CPU time goes into streaming the weights; ONNX
Runtime pre-packs them once per session. The whole sentence-transformers pipeline is
exported once per model fingerprint, cached, and checked against PyTorch at each load
before it is used. Figures and the alternatives tried: docs/searching.md.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from resources.storage.files import scratch_folder, sweep

log = logging.getLogger(__name__)

#: ONNX opset of the export: the lowest the torch.export-based exporter writes (ONNX Runtime 1.14+).
OPSET = 18
#: The session must agree with PyTorch at least this well on every probe query.
MIN_PROBE_COSINE = 0.9999
#: Probe queries: short and long, Latin, Cyrillic, CJK and Arabic scripts.
PROBES = (
    "a dog on the beach",
    "montañas nevadas al atardecer con un lago helado y cielo despejado",
    "城市夜景",
    "Кошка спит на диване",
    "قارب في البحر",
)
_SAMPLE_VALUES = 4096


class OnnxTextError(Exception):
    """The model could not be exported, loaded or verified; the message says why."""


def fingerprint(model) -> str:
    """A digest of the model's structure and weights (a strided sample of each tensor) and the exporter versions."""
    import torch

    digest = hashlib.sha256(f"{torch.__version__}|opset{OPSET}|external-data|{model!r}".encode())
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // _SAMPLE_VALUES)
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(flat[::step].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:24]


def _preprocess(model, texts: list[str]) -> dict:
    """The model's tokenizer output for ``texts`` (``preprocess`` from sentence-transformers 6, ``tokenize`` before)."""
    method = getattr(model, "preprocess", None) or model.tokenize
    return method(texts)


def _pipeline(model, names: list[str]):
    """The sentence-transformers model as a module of positional tensors, which ``torch.onnx.export`` traces."""
    import torch

    class Pipeline(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            return self.model(dict(zip(names, tensors)))["sentence_embedding"]

    return Pipeline().eval()


def _export(model, path: Path) -> None:
    """Export ``model`` to ``path``, its weights to ``path.data`` beside it, without ever showing half an export.

    Both files are written in a temporary folder beside ``path``, then renamed into place,
    the weights first: ``path`` appears last, whole, and already finds its weights. The
    weights live in their own file because ONNX Runtime maps such a file into memory
    instead of copying it: the embedding table's rows then cost memory only once a query
    uses them (a session of the full-size model: 239 MB of RSS against 631 MB inline).
    """
    import torch

    features = _preprocess(model, list(PROBES[:2]))
    names = [name for name, value in features.items() if isinstance(value, torch.Tensor)]
    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens")
    # Other processes may be exporting the same model right now: only abandoned temporaries go.
    sweep(path.parent)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    # The graph records its weights file by name, so both are exported under their final
    # names into a temporary folder, then renamed out of it, the weights first.
    try:
        with scratch_folder(path) as folder:
            tmp = folder / path.name
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                # The exporter warns about its own internals (axis naming, pytree deprecations)
                # and logs the torchvision operators it skips, which a text model never uses; the
                # probe check in ``load`` is what proves the graph right for any input length.
                warnings.simplefilter("ignore")
                exporter_log.setLevel(logging.ERROR)
                torch.onnx.export(
                    _pipeline(model, names),
                    tuple(features[name] for name in names),
                    str(tmp),
                    input_names=names,
                    output_names=["sentence_embedding"],
                    dynamic_shapes=(tuple({0: batch, 1: tokens} for _ in names),),
                    opset_version=OPSET,
                    dynamo=True,
                    external_data=True,
                    verbose=False,
                )
            data = tmp.with_name(tmp.name + ".data")
            if not data.is_file():
                raise OnnxTextError(f"the exporter wrote no weights file beside {tmp.name}")
            os.replace(data, path.with_name(data.name))
            os.replace(tmp, path)
    finally:
        exporter_log.setLevel(level)


def _without_weights(model):
    """A copy of ``model`` whose parameters and buffers are empty ``meta`` tensors: its tokenizer without its weights.

    Once the session is verified it needs only the model's tokenizer, so the copy lets the
    caller drop the PyTorch weights (about as large as the session's own) without touching
    the model object anyone else may hold.
    """
    import torch

    tensors = list(model.parameters()) + list(model.buffers())
    memo = {
        id(t): torch.nn.Parameter(torch.empty_like(t, device="meta"), requires_grad=False)
        if isinstance(t, torch.nn.Parameter)
        else torch.empty_like(t, device="meta")
        for t in tensors
    }
    return copy.deepcopy(model, memo)


class OnnxTextModel:
    """A verified ONNX Runtime session for one sentence-transformers text model; thread-safe."""

    def __init__(self, model, session, names: list[str], path: Path, probe_cosine: float):
        self._model = model
        self._session = session
        self._names = names
        self.path = path
        self.probe_cosine = probe_cosine

    @classmethod
    def load(cls, model, cache_dir: Path) -> "OnnxTextModel":
        """Open the cached export of ``model`` (exporting it first if needed) and verify it against PyTorch.

        Raises :class:`OnnxTextError` saying why when onnxruntime is missing, the export or
        the session fails, or the session disagrees with PyTorch on a probe query.
        """
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise OnnxTextError(f"onnxruntime is not installed ({exc})") from None
        path = Path(cache_dir) / f"{fingerprint(model)}.onnx"
        try:
            if not path.exists():
                log.info("exporting the text model to ONNX at %s (once per model)", path)
                _export(model, path)
            options = ort.SessionOptions()
            # Idle worker threads sleep at once instead of spinning, which would take the
            # cores the kNN search needs right after each encode.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            onnx_model = cls(model, session, [i.name for i in session.get_inputs()], path, 0.0)
            onnx_model.probe_cosine = onnx_model._agreement()
        except Exception as exc:  # noqa: BLE001 - any export, load or run failure means "use PyTorch", with the reason
            raise OnnxTextError(f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None
        if onnx_model.probe_cosine < MIN_PROBE_COSINE:
            raise OnnxTextError(
                f"the ONNX export at {path} disagrees with PyTorch (cosine {onnx_model.probe_cosine:.6f} "
                f"< {MIN_PROBE_COSINE}); delete the file to export it again"
            )
        onnx_model._model = _without_weights(model)
        return onnx_model

    def _agreement(self) -> float:
        """The smallest cosine between this session's and PyTorch's vectors for :data:`PROBES`, one by one and batched."""
        reference = self._model.encode(list(PROBES), convert_to_numpy=True, normalize_embeddings=True)
        single = np.concatenate([self.encode([text]) for text in PROBES])
        batched = self.encode(list(PROBES))
        return float(min((reference * single).sum(axis=1).min(), (reference * batched).sum(axis=1).min()))

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """``len(texts) x dim`` L2-normalised float32 vectors."""
        out = []
        for start in range(0, len(texts), batch_size):
            features = _preprocess(self._model, list(texts[start : start + batch_size]))
            feed = {name: features[name].numpy().astype(np.int64, copy=False) for name in self._names}
            vectors = self._session.run(None, feed)[0].astype(np.float32, copy=False)
            out.append(vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12))
        return np.concatenate(out)
