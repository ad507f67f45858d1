"""Image runtimes: what turns a batch of prepared pixels (``N x H x W x 3`` uint8) into unit vectors.

:class:`TorchRuntime` runs the sentence-transformers model itself, at the precision the
device computes natively. :class:`OpenVinoRuntime` runs the same image tower compiled by
OpenVINO, int8-quantized by NNCF on the user's own photos; the pixels' normalisation
and the final L2 normalisation are part of its graph. Building it
(:func:`build_openvino`) takes the PyTorch model; loading it needs only the cached files,
read once into memory (:func:`read_ir`) so that the bytes a verdict's digest vouches for
are the bytes compiled, whatever another writer renames into the folder meanwhile.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from contextlib import nullcontext, redirect_stdout
from pathlib import Path

import numpy as np

from resources.encoder.decode import Preprocess
from resources.storage.files import scratch_folder, sweep

log = logging.getLogger(__name__)

#: Layers left in floating point by the int8 quantization (OpenVINO node-name patterns).
FLOAT_LAYERS = [".*patch_embedding.*", ".*visual_projection.*"]


class TorchRuntime:
    """The PyTorch image tower on the encoder's device, in fp32, bf16 or fp16 autocast."""

    name = "torch"

    def __init__(self, clip, pre: Preprocess, device: str, precision: str):
        self.clip, self.pre, self.device, self.precision = clip, pre, device, precision

    def _autocast(self):
        import torch

        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device, dtype=dtype)

    def __call__(self, pixels) -> np.ndarray:
        """Normalise a ``N x H x W x 3`` uint8 tensor or array on the device, run the image tower, L2-normalise."""
        import torch

        batch = torch.as_tensor(pixels).to(self.device, non_blocking=True)
        if batch.is_cuda:
            # Made on the decode thread's stream: tell the allocator this stream uses it too.
            batch.record_stream(torch.cuda.current_stream())
        mean = torch.tensor(self.pre.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.pre.std, device=self.device).view(1, 3, 1, 1)
        batch = (batch.permute(0, 3, 1, 2).float().div_(255.0) - mean).div_(std)
        with torch.inference_mode(), self._autocast():
            out = self.clip.get_image_features(pixel_values=batch)
        out = getattr(out, "pooler_output", out).float()
        out = torch.nn.functional.normalize(out, dim=-1)
        return out.cpu().numpy().astype(np.float32, copy=False)


def pixel_tower(clip, pre: Preprocess):
    """The image tower as a module from uint8 NHWC pixels to unit vectors: what the other runtimes compile."""
    import torch

    class PixelTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.clip = clip
            self.register_buffer("mean", torch.tensor(pre.mean).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("std", torch.tensor(pre.std).view(1, 3, 1, 1) * 255.0)

        def forward(self, pixels):
            batch = (pixels.permute(0, 3, 1, 2).float() - self.mean) / self.std
            out = self.clip.get_image_features(pixel_values=batch)
            out = getattr(out, "pooler_output", out)
            return torch.nn.functional.normalize(out, dim=-1)

    return PixelTower().eval()


def quantize_openvino(model, calibration: np.ndarray):
    """NNCF int8 post-training quantization of ``model`` on the prepared ``calibration`` pixels.

    Transformer mode keeps the softmax, layer norms and GELU in floating point and smooths
    the activations' outliers (SmoothQuant) before quantizing the matrix products. The
    first layer (patch embedding, on raw pixels) and the last (projection into the shared
    space) stay in floating point too: on a full-size ViT-B/32 that raised the smallest
    cosine with fp32 from 0.9918 to 0.9958 on held-out photos (docs/results/embed.md).
    """
    import nncf

    from resources.encoder.devices import cpu_info

    data = nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))])
    keep_float = nncf.IgnoredScope(patterns=FLOAT_LAYERS, validate=False)
    # NNCF draws its progress bars on stdout, which belongs to the command's own output (--json);
    # its logger's handler holds the stdout it found at import, which a redirect does not reach.
    for handler in logging.getLogger("nncf").handlers:
        if type(handler) is logging.StreamHandler:
            handler.setStream(sys.stderr)
    with redirect_stdout(sys.stderr):
        return nncf.quantize(
            model,
            data,
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calibration),
            ignored_scope=keep_float,
            advanced_parameters=nncf.AdvancedQuantizationParameters(
                overflow_fix=nncf.OverflowFix(overflow_fix(cpu_info()))
            ),
        )


def overflow_fix(cpu) -> str:
    """NNCF's saturation workaround for ``cpu`` (an ``nncf.OverflowFix`` value): 7-bit weights where int8 sums saturate.

    Without VNNI or AMX, the int8 dot product (AVX2's ``vpmaddubsw``) adds pairs of
    products in 16 bits and clamps what overflows; OpenVINO's "Saturation (overflow) Issue
    Workaround" page says so and that VNNI CPUs are free of it. On the AVX2 EPYC that cost
    the tiny test model's gate its 0.99 (min cosine 0.985); NNCF's default fixes only the
    first layer, which this build keeps in floating point anyway.
    """
    return "first_layer_only" if cpu.int8_dot_product else "enable"


def build_openvino(clip, pre: Preprocess, calibration: np.ndarray, target: Path) -> tuple[bytes, bytes]:
    """Convert the image tower to OpenVINO, quantize it to int8 and save ``target`` (.xml, with its .bin).

    Written in a scratch folder beside ``target`` and renamed into place, the weights
    first. The two renames are two steps, so a reader may still find one file of another
    build beside the other: returns the IR's bytes as written, which the gate judges and
    whose :func:`ir_digest` its verdict records.
    """
    import openvino as ov
    import torch

    example = torch.from_numpy(calibration[:1])
    with torch.no_grad():
        model = ov.convert_model(pixel_tower(clip, pre), example_input=example, input=[(-1, pre.crop, pre.crop, 3)])
    model = quantize_openvino(model, calibration)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep(target.parent)
    with scratch_folder(target) as folder:
        ov.save_model(model, folder / target.name, compress_to_fp16=False)
        written = read_ir(folder / target.name)
        os.replace(folder / target.with_suffix(".bin").name, target.with_suffix(".bin"))
        os.replace(folder / target.name, target)
    return written


def read_ir(xml: Path) -> tuple[bytes, bytes]:
    """The bytes of an OpenVINO IR: ``xml`` and the ``.bin`` beside it (``OSError`` when either cannot be read)."""
    return Path(xml).read_bytes(), Path(xml).with_suffix(".bin").read_bytes()


def ir_digest(ir: tuple[bytes, bytes]) -> str:
    """A SHA-256 of an IR's two files: what a gate verdict is about."""
    digest = hashlib.sha256()
    for part in ir:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def inference_hint() -> str:
    """The precision OpenVINO computes the float layers in here: bf16 where the CPU has it natively, else f32."""
    from resources.encoder.devices import cpu_supports_bf16

    return "bf16" if cpu_supports_bf16() else "f32"


class OpenVinoRuntime:
    """A compiled OpenVINO image tower on the CPU; thread-safe (one infer request per call)."""

    name = "openvino"

    def __init__(self, ir: tuple[bytes, bytes], precision: str = "int8"):
        """Compile ``ir`` (the .xml and .bin bytes, see :func:`read_ir`) for this CPU."""
        import openvino as ov

        self.precision = precision
        core = ov.Core()
        model = core.read_model(ir[0], ir[1])
        self._compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": inference_hint()})

    def __call__(self, pixels) -> np.ndarray:
        """Unit vectors of a ``N x H x W x 3`` uint8 batch."""
        out = self._compiled.create_infer_request().infer({0: np.ascontiguousarray(pixels, dtype=np.uint8)})[0]
        return np.asarray(out, dtype=np.float32)
