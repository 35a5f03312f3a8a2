"""Speed of the synthetic FreiHAND renderer on one core.

    python benchmarks/bench_renderer.py [--samples N] [--image-size S] [--json OUT.json]

Renders N unique samples (4 colour versions each, as the training split has them) single-
threaded into a temporary directory, twice: stage by stage (pose + ray casting + shading +
colour versions, then JPEG encode + write), and end to end through `render_dataset` (JSON and
mesh files included). Prints a table and writes the figures as JSON. CPU seconds are reported
beside wall seconds because development machines are often shared.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before NumPy loads BLAS: one core, as stated
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tune_hand.data.synthetic import (TRAIN_VERSIONS, _jpeg, render_dataset, render_sample,  # noqa: E402
                                      sample_rng)


def bench_stages(n: int, size: int, out: Path) -> dict:
    """Render then encode + write each sample, timing the two stages separately."""
    (out / "rgb").mkdir(parents=True)
    render_s = encode_s = render_cpu = encode_cpu = 0.0
    for k in range(n):
        w0, c0 = time.perf_counter(), time.process_time()
        s = render_sample(sample_rng(0, "training", k), size)
        w1, c1 = time.perf_counter(), time.process_time()
        for v, img in enumerate(s.images):
            (out / "rgb" / f"{v * n + k:08d}.jpg").write_bytes(_jpeg(cv2.cvtColor(img, cv2.COLOR_RGB2BGR)))
        (out / f"mask{k:08d}.jpg").write_bytes(_jpeg(s.mask))
        w2, c2 = time.perf_counter(), time.process_time()
        render_s, encode_s = render_s + w1 - w0, encode_s + w2 - w1
        render_cpu, encode_cpu = render_cpu + c1 - c0, encode_cpu + c2 - c1
    images = TRAIN_VERSIONS * n
    return {"render_ms_per_image": 1000 * render_s / images, "encode_write_ms_per_image": 1000 * encode_s / images,
            "render_cpu_ms_per_image": 1000 * render_cpu / images,
            "encode_write_cpu_ms_per_image": 1000 * encode_cpu / images,
            "images_per_s": images / (render_s + encode_s), "cpu_images_per_s": images / (render_cpu + encode_cpu)}


def bench_end_to_end(n: int, size: int, out: Path) -> dict:
    c0 = time.process_time()
    summary = render_dataset(out, n_train=n, n_eval=0, image_size=size, with_mesh_files=True)
    cpu = time.process_time() - c0
    images = summary["train_images"]
    return {"seconds": summary["seconds"], "cpu_seconds": cpu, "images_per_s": summary["images_per_s"],
            "cpu_images_per_s": images / cpu, "unique_samples_per_s": n / summary["seconds"],
            "ms_per_image": 1000 * summary["seconds"] / images,
            "bytes_on_disk": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200, help="unique samples (x4 images); default 200")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--json", metavar="OUT.json", help="write the figures here")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    render_sample(sample_rng(0, "training", 0), args.image_size)  # warm caches (noise bank, imports)

    with tempfile.TemporaryDirectory(prefix="bench_renderer.") as tmp:
        stages = bench_stages(args.samples, args.image_size, Path(tmp) / "stages")
        e2e = bench_end_to_end(args.samples, args.image_size, Path(tmp) / "dataset")

    n, images = args.samples, TRAIN_VERSIONS * args.samples
    print(f"synthetic renderer: {n} unique samples x {TRAIN_VERSIONS} versions = {images} images, "
          f"{args.image_size}px, 1 thread")
    rows = [("render (pose, ray cast, shade, 4 versions)", stages["render_ms_per_image"],
             stages["render_cpu_ms_per_image"]),
            ("JPEG encode + write", stages["encode_write_ms_per_image"], stages["encode_write_cpu_ms_per_image"]),
            ("end to end (render_dataset, JSON + mesh files)", e2e["ms_per_image"], 1000 * e2e["cpu_seconds"] / images)]
    print(f"{'stage':<48} {'ms/image':>9} {'CPU ms/image':>13}")
    for name, wall, cpu in rows:
        print(f"{name:<48} {wall:>9.2f} {cpu:>13.2f}")
    print(f"end to end: {e2e['images_per_s']:.1f} images/s, {e2e['unique_samples_per_s']:.1f} unique samples/s "
          f"(CPU-time rate {e2e['cpu_images_per_s']:.1f} images/s); {e2e['bytes_on_disk'] / images / 1024:.1f} KiB "
          f"on disk per image")

    result = {"samples": n, "images": images, "image_size": args.image_size, "threads": 1,
              "stages": stages, "end_to_end": e2e,
              "machine": {"python": platform.python_version(), "numpy": np.__version__, "opencv": cv2.__version__,
                          "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                          "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}}
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
