"""Rotation averaging with n angles: ours vs a per-sample loop like the paper's code vs the
bare cost of n plain forwards (the limit), same model, same batch, same outputs.

    python benchmarks/bench_tta.py --config paper --batch-size 32 --n 10 --json out.json
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import device_name, model_bench_parser, model_bench_setup, sync  # noqa: E402
from tune_hand.geometry import rot_z  # noqa: E402
from tune_hand.model import build_model  # noqa: E402
from tune_hand.rotation_tta import predict_rotation_averaged, rotate_images  # noqa: E402


@torch.no_grad()
def paper_style(model, images, K, n):
    """The authors' shape: per angle, rotate each sample separately, forward, rotate each
    sample's points back in a Python loop, then average."""
    total = torch.zeros(images.shape[0], 21, 3, device=images.device)
    for k in range(n):
        theta = 2 * math.pi * k / n
        rotated = torch.cat([rotate_images(images[b:b + 1], K[b:b + 1], theta) for b in range(len(images))])
        pred = model(rotated).float()
        back = torch.as_tensor(rot_z(-theta), dtype=pred.dtype, device=pred.device)
        for b in range(len(images)):
            total[b] += pred[b] @ back.T
    return total / n


@torch.no_grad()
def bare_forwards(model, images, K, n):
    out = None
    for _ in range(n):
        out = model(images)
    return out


def timed(fn, device, repeats: int) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    sync(device)
    return (time.perf_counter() - start) / repeats, out



def main() -> None:
    p = model_bench_parser(__doc__)
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    cfg, device = model_bench_setup(args)
    torch.manual_seed(0)
    model = build_model(cfg).to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    size = cfg.data.image_size
    images = torch.rand(args.batch_size, 3, size, size, device=device)
    f = 1.2 * size
    K = torch.tensor([[f, 0, (size - 1) / 2], [0, f, (size - 1) / 2], [0, 0, 1.0]]).repeat(args.batch_size, 1, 1)
    n = args.n
    rows = {}
    for label, fn in [
        ("bare n forwards (limit)", lambda: bare_forwards(model, images, K, n)),
        ("ours, chunk=1 (loop)", lambda: predict_rotation_averaged(model, images, K, n, chunk=1)),
        ("ours, chunk=n (one batch)", lambda: predict_rotation_averaged(model, images, K, n, chunk=n)),
        ("paper-style per-sample loop", lambda: paper_style(model, images, K, n)),
    ]:
        seconds, out = timed(fn, device, args.repeats)
        rows[label] = {"seconds": seconds, "out": out}
    ref = rows["paper-style per-sample loop"]["out"]
    name = device_name(device)
    limit = rows["bare n forwards (limit)"]["seconds"]
    print(f"rotation averaging n={n}, {args.config} ({cfg.model.encoder} {size}px), batch {args.batch_size}, {name}")
    table = []
    for label, r in rows.items():
        diff = float((r["out"] - ref).abs().max()) if "ours" in label else float("nan")
        table.append({"variant": label, "ms": round(1000 * r["seconds"], 2),
                      "images_per_s": round(args.batch_size / r["seconds"], 1),
                      "x_limit": round(r["seconds"] / limit, 3), "max_diff_mm_vs_paper_style": diff})
        print(f"  {label:<30} {1000 * r['seconds']:>9.1f} ms  {args.batch_size / r['seconds']:>8.1f} img/s"
              f"  x{r['seconds'] / limit:.3f} of limit" + ("" if np.isnan(diff) else f"  max|diff| {diff:.2e} mm"))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"config": args.config, "n": n, "batch": args.batch_size,
                                               "device": name, "rows": table}, indent=2))


if __name__ == "__main__":
    main()
