"""``image-search bench embed``: the project's embedding path against the original design's loop and the model alone.

On the same files and model it times (a) ``model.encode(Image.open(path))`` one image per
call in fp32, (m) the PyTorch model alone on prepared pixels at its best native precision,
batch 32, and (b) :meth:`resources.encoder.clip.ClipEncoder.encode_image_files` with the
image runtime the pipeline would choose (built and gated on these files), and compares
throughput, peak memory and the vectors' cosines; ``--asset N`` instead measures the real
``image_embeddings`` asset in a child. Method and figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from benchmarks.harness import add_json_flag, peak_rss_mb, print_figures, run_child
from resources.encoder.devices import cpu_info
from resources.errors import ImageSearchError
from resources.storage.files import Staged

BENCH_SIZE = (640, 427)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif"}
REPO = Path(__file__).resolve().parents[1]


def _bench_image(seed: int) -> Image.Image:
    """A photo-like 640x427 picture: soft gradients, shapes and grain, different for each seed."""
    rng = np.random.default_rng(seed)
    width, height = BENCH_SIZE
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    pixels = a * (1 - y) + b * y + 40 * np.sin(6 * x + rng.uniform(0, 6))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        box = (x0, y0, x0 + rng.integers(20, 240), y0 + rng.integers(20, 200))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(1.5))
    grain = rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image, np.float32) + grain, 0, 255).astype(np.uint8), "RGB")


def _write_one(args: tuple[Path, int]) -> None:
    folder, seed = args
    final = folder / f"bench-{seed:06d}.jpg"
    if not final.exists():
        with Staged(final) as partial:
            _bench_image(seed).save(partial, "JPEG", quality=85)


def write_bench_images(folder: Path, count: int, workers: int | None = None) -> list[Path]:
    """Write ``count`` benchmark JPEGs into ``folder`` (those already there are kept) and return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(workers or os.cpu_count()) as pool:
        list(pool.map(_write_one, [(folder, seed) for seed in range(count)], chunksize=32))
    return [folder / f"bench-{seed:06d}.jpg" for seed in range(count)]


def _image_files(folder: Path, limit: int | None) -> list[Path]:
    if not folder.is_dir():
        raise ImageSearchError(f"--images {folder} is not a folder: give a folder of images, or add --make N")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ImageSearchError(f"--images {folder} holds no .jpg/.png/.webp/.gif files: add --make N to write some")
    return files[:limit] if limit else files


def run_bench(
    files: list[Path],
    model: str,
    *,
    device: str,
    precision: str,
    batch_size: int,
    workers: int,
    baseline_limit: int,
    gpu_decode: bool = True,
    runtime: str = "auto",
    runtimes_dir: Path | None = None,
    gate_images: int = 200,
    calibration_images: int = 300,
) -> dict:
    """Time (a), (m) and (b) on ``files`` with ``model``; return every figure."""
    import torch

    from resources.encoder.clip import ClipEncoder

    encoder = ClipEncoder(
        model,
        model,
        device=device,
        precision=precision,
        batch_size=batch_size,
        decode_workers=workers,
        gpu_decode=gpu_decode,
        runtime=runtime,
        runtimes_dir=runtimes_dir,
    )
    st_model = encoder.image_model
    baseline_files = files[: baseline_limit or len(files)]

    st_model.encode(Image.open(baseline_files[0]))
    started = time.perf_counter()
    reference = np.stack([st_model.encode(Image.open(p)) for p in baseline_files]).astype(np.float32)
    baseline_s = time.perf_counter() - started
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)

    stages = time_stages(encoder, files)
    report = encoder.select_image_runtime(files, gate_images, calibration_images)
    stages["runtime_model_only_img_per_s"] = _model_only(encoder.image_runtime, stages.pop("_pixels"))
    list(encoder.encode_image_files(files[: encoder.batch_size]))
    if encoder.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    vectors = np.zeros((len(files), encoder.dim), dtype=np.float32)
    encoded, failed = 0, 0
    started = time.perf_counter()
    for batch in encoder.encode_image_files(files):
        vectors[batch.indices] = batch.vectors
        encoded += len(batch.indices)
        failed += len(batch.failures)
    project_s = time.perf_counter() - started
    project_peak_rss_mb = peak_rss_mb()
    cosines = np.sum(vectors[: len(baseline_files)] * reference, axis=1)
    # The speed-up is the ratio of the rates as printed, so the figures agree with each other.
    baseline_rate = round(len(baseline_files) / baseline_s, 2)
    project_rate = round(encoded / project_s, 2)
    figures = {
        "images": len(files),
        "baseline_images": len(baseline_files),
        "model": model,
        "dim": encoder.dim,
        "device": encoder.device,
        "precision": encoder.precision,
        "batch_size": encoder.batch_size,
        "decode_workers": encoder.decode_workers,
        "gpu_jpeg_decode": encoder.gpu_jpeg_decode,
        "baseline_img_per_s": baseline_rate,
        "project_img_per_s": project_rate,
        "speedup": round(project_rate / baseline_rate, 2),
        **_runtime_figures(encoder, report, stages, project_rate),
        "project_failures": failed,
        "cosine_mean": round(float(cosines.mean()), 5),
        "cosine_min": round(float(cosines.min()), 5),
        "peak_rss_mb": peak_rss_mb(),
        "project_peak_rss_mb": project_peak_rss_mb,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_model": cpu_info().model,
        "cpu_flags": " ".join(cpu_info().flags),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if encoder.device == "cuda":
        figures["gpu"] = torch.cuda.get_device_name()
        figures["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return figures


def _runtime_figures(encoder, report, stages: dict, project_rate: float) -> dict:
    """The stages apart, the runtime chosen and its gate, and the speed-up over the PyTorch model alone."""
    return {
        "model_only_img_per_s": stages["model_only_img_per_s"],
        "speedup_vs_model_only": round(project_rate / stages["model_only_img_per_s"], 2),
        "decode_only_img_per_s": stages["decode_only_img_per_s"],
        "runtime_model_only_img_per_s": stages["runtime_model_only_img_per_s"],
        "runtime": encoder.runtime_label[0],
        "runtime_precision": encoder.runtime_label[1],
        "gate_verdict": "not run" if report is None else ("passed" if report.passed else "failed"),
        "gate_cosine_min": None if report is None else report.cosine_min,
        "gate_top10_overlap": None if report is None else report.top10_overlap,
        "gate_sample": 0 if report is None else report.sample,
    }


def _model_only(runtime, pixels: np.ndarray, batch: int = 32, rounds: int = 3) -> float:
    """Images per second of ``runtime`` alone on prepared pixels in whole batches of ``batch``, after a warm-up."""
    batches = [pixels[i : i + batch] for i in range(0, len(pixels) - batch + 1, batch)] or [pixels]
    runtime(batches[0])
    started = time.perf_counter()
    for _ in range(rounds):
        for chunk in batches:
            runtime(chunk)
    return round(rounds * sum(len(chunk) for chunk in batches) / (time.perf_counter() - started), 2)


def time_stages(encoder, files: list[Path], limit: int = 128) -> dict:
    """The stages apart, on up to ``limit`` files: decoding with the encoder's workers, and the PyTorch model alone.

    The model runs at the encoder's precision, the best the device computes natively
    (``model_only_img_per_s``); the prepared pixels are kept for timing other runtimes.
    """
    from resources.encoder.selection import prepared_pixels

    sample = [str(p) for p in files[:limit]]
    started = time.perf_counter()
    pixels = prepared_pixels(sample, encoder.preprocess, encoder.decode_workers)
    decode_rate = round(len(pixels) / (time.perf_counter() - started), 2)
    return {
        "decode_only_img_per_s": decode_rate,
        "model_only_img_per_s": _model_only(encoder.image_runtime, pixels),
        "_pixels": pixels,
    }


_ASSET_CHILD = """
import sys
from dagster import DagsterInstance, materialize
from assets.embeddings import image_embeddings
from resources.dagster_resources import ClipResource, SettingsResource
settings = SettingsResource(home=sys.argv[1], image_model=sys.argv[2], text_model=sys.argv[2])
result = materialize([image_embeddings], resources={"settings": settings, "clip": ClipResource(settings=settings)},
                     instance=DagsterInstance.ephemeral(),
                     tags={"dagster/asset_partition_range_start": "b00", "dagster/asset_partition_range_end": "b63"})
meta = result.get_asset_materialization_events()[0].materialization.metadata
print(meta["encoded"].value, meta["throughput_img_per_s"].value)
"""


def run_asset(sources: list[Path], count: int, model: str) -> dict:
    """Run the real ``image_embeddings`` asset over ``count`` stored images (hard links to ``sources``) in a child."""
    import pandas as pd

    from assets.partitions import photo_bucket
    from resources.images.image_store import ImageStore

    with tempfile.TemporaryDirectory(prefix="bench-embed-asset-") as tmp:
        home = Path(tmp) / "home"
        ids = [f"bench{i:06d}" for i in range(count)]
        catalog = pd.DataFrame({"photo_id": ids, "photo_image_url": [f"file:///bench/{i}.jpg" for i in ids]})
        catalog["bucket"] = catalog["photo_id"].map(photo_bucket)
        (home / "catalog").mkdir(parents=True)
        catalog.to_parquet(home / "catalog" / "catalog.parquet", index=False)
        store = ImageStore(home / "images")
        for i, photo_id in enumerate(ids):
            target = store.path_for(photo_id)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(sources[i % len(sources)], target)
            except OSError:
                target.write_bytes(sources[i % len(sources)].read_bytes())
        child = run_child(
            [sys.executable, "-c", textwrap.dedent(_ASSET_CHILD), str(home), model],
            what="the image_embeddings run",
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    encoded, throughput = child.stdout.strip().splitlines()[-1].split()
    return {
        "asset_images": count,
        "asset_encoded": int(encoded),
        "asset_img_per_s": float(throughput),
        "asset_wall_s": child.seconds,
        "asset_peak_rss_mb": child.peak_rss_mb,
        "model": model,
    }


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench embed``."""
    parser = sub.add_parser("embed", help="project embedding path vs the original one-image-per-call loop")
    parser.add_argument("--images", type=Path, help="folder of images (default: a temporary folder; needs --make)")
    parser.add_argument("--make", type=int, default=0, metavar="N", help="first write N 640x427 benchmark JPEGs there")
    parser.add_argument("--model", help="image model name or path (default: IMAGE_SEARCH_IMAGE_MODEL)")
    parser.add_argument("--limit", type=int, default=0, metavar="N", help="use at most N images")
    parser.add_argument(
        "--baseline-limit",
        type=int,
        default=0,
        metavar="N",
        help="time the original loop on the first N images only (default: all)",
    )
    parser.add_argument("--device", help="cpu, cuda or auto (default: IMAGE_SEARCH_DEVICE)")
    parser.add_argument("--precision", help="fp32, bf16, fp16 or auto (default: IMAGE_SEARCH_PRECISION)")
    parser.add_argument("--batch-size", type=int, help="images per model call (default: IMAGE_SEARCH_EMBED_BATCH_SIZE)")
    parser.add_argument("--workers", type=int, help="decode workers (default: IMAGE_SEARCH_DECODE_WORKERS)")
    parser.add_argument("--runtime", help="image runtime: auto, torch or openvino (default: IMAGE_SEARCH_RUNTIME)")
    parser.add_argument(
        "--asset",
        type=int,
        default=0,
        metavar="N",
        help="instead, run the image_embeddings asset on N stored images and report its peak RSS",
    )
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``image-search bench embed``."""
    from resources.config import Settings

    settings = Settings.from_env()
    model = args.model or settings.image_model
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        folder = args.images or Path(tmp)
        if args.make:
            write_bench_images(folder, args.make)
        files = _image_files(folder, args.limit or None)
        if args.asset:
            figures = run_asset(files, args.asset, model)
        else:
            figures = run_bench(
                files,
                model,
                device=args.device or settings.device,
                precision=args.precision or settings.precision,
                batch_size=args.batch_size if args.batch_size is not None else settings.embed_batch_size,
                workers=args.workers if args.workers is not None else settings.decode_workers,
                baseline_limit=args.baseline_limit,
                gpu_decode=settings.gpu_decode,
                runtime=args.runtime or settings.runtime,
                # Built anew each run, as a user's first run builds it (its time is not in the figures).
                runtimes_dir=Path(tmp) / "runtimes",
                gate_images=settings.runtime_gate_images,
                calibration_images=settings.runtime_calibration_images,
            )
    return print_figures(args, figures, _asset_lines if args.asset else _lines)


def _asset_lines(f: dict) -> list[str]:
    return [
        f"image_embeddings asset on {f['asset_images']} stored images ({f['model']}): "
        f"{f['asset_encoded']} encoded at {f['asset_img_per_s']} img/s, "
        f"{f['asset_wall_s']} s wall, peak RSS {f['asset_peak_rss_mb']} MB"
    ]


def _lines(f: dict) -> list[str]:
    gate = (
        f["gate_verdict"]
        if f["gate_verdict"] == "not run"
        else (
            f"{f['gate_verdict']} (cosine min {f['gate_cosine_min']}, top-10 overlap {f['gate_top10_overlap']} "
            f"on {f['gate_sample']} held-out images)"
        )
    )
    return [
        f"CPU flags that pick precision and runtime: {f['cpu_flags'] or 'none'}; {f['cpu_count']} CPUs, "
        f"load average {' '.join(map(str, f['load_average']))} (the CPU's model is on the last line)",
        f"images: {f['images']} ({f['baseline_images']} for the baseline); model {f['model']} "
        f"({f['dim']}-d) on {f['device']}{' ' + f['gpu'] if 'gpu' in f else ''}",
        f"(a) original loop, one image per model.encode call, fp32: {f['baseline_img_per_s']} img/s",
        f"(m) PyTorch model only, prepared pixels, batch 32, {f['precision']}: {f['model_only_img_per_s']} img/s",
        f"runtime chosen: {f['runtime']}/{f['runtime_precision']}, gate {gate}",
        f"stages apart: decode {f['decode_only_img_per_s']} img/s with {f['decode_workers']} workers, "
        f"runtime model only {f['runtime_model_only_img_per_s']} img/s",
        f"(b) project path, files to unit vectors ({f['runtime']}/{f['runtime_precision']}, batch {f['batch_size']}, "
        f"{f['decode_workers']} decode workers, GPU JPEG decode {f['gpu_jpeg_decode']}): "
        f"{f['project_img_per_s']} img/s, {f['project_failures']} failures",
        f"speed-up (b)/(a): {f['speedup']}x; (b)/(m): {f['speedup_vs_model_only']}x",
        f"cosine (b) vs fp32 (a): mean {f['cosine_mean']}, min {f['cosine_min']}",
        f"peak RSS: {f['peak_rss_mb']} MB (process), {f['project_peak_rss_mb']} MB by the end of (b)"
        + (f"; GPU peak {f['gpu_peak_mb']} MB" if "gpu_peak_mb" in f else ""),
    ]


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.embed ...``: the same benchmark without the rest of the CLI.

    The full ``image-search`` CLI imports every command's module (Dagster among them); a
    bare GPU machine may have only torch and the model libraries.
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.embed")
    register(parser.add_subparsers(dest="bench", required=True))
    args = parser.parse_args(["embed", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.handler(args)
    except ImageSearchError as exc:
        print(f"image-search: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
