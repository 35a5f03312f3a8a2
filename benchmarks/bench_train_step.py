"""Training-step throughput (images/s) of one config, side by side with and without AMP/channels_last.

Measures `tune_hand.training.train_step` (the loop's own step) on device-resident random
batches, so the figure is the model's cost, not the input pipeline's.

    python benchmarks/bench_train_step.py --config paper --batch-size 32 --json out.json
    python benchmarks/bench_train_step.py --config small --batch-size 32 --compile
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import device_name, model_bench_parser, model_bench_setup, sync  # noqa: E402
from tune_hand.model import build_model, describe_model  # noqa: E402
from tune_hand.training import train_step  # noqa: E402


def variants(device: torch.device, compiled: bool) -> list[tuple[str, bool, torch.dtype | None, bool]]:
    """(label, channels_last, amp dtype, torch.compile); the compiled variant is the fastest eager one, compiled."""
    out = [("fp32", False, None, False), ("fp32 channels_last", True, None, False)]
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        out.append((f"{str(dtype).split('.')[-1]} amp channels_last", True, dtype, False))
    if compiled:
        label, cl, amp, _ = out[-1]
        out.append((f"{label} compiled", cl, amp, True))
    return out


def measure(cfg, device, batch: int, channels_last: bool, amp_dtype, steps: int, warmup: int,
            compiled: bool = False) -> float:
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    step_model = torch.compile(model) if compiled else model  # as Trainer does with train.compile
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    size = cfg.data.image_size
    x = torch.randint(0, 256, (batch, 3, size, size), device=device, dtype=torch.uint8)
    y = torch.randn(batch, 21, 3, device=device) * 50
    if cfg.model.target == "root_relative":
        y = y - y[:, :1]

    def step():
        xi = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        return train_step(step_model, opt, scaler, xi.float().div_(255.0), y, amp_dtype)

    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync(device)
    assert torch.isfinite(loss)
    return batch * steps / (time.perf_counter() - start)



def main() -> None:
    p = model_bench_parser(__doc__)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action="store_true",
                   help="add the fastest variant under torch.compile (warm-up steps include compiling)")
    args = p.parse_args()
    cfg, device = model_bench_setup(args)
    name = device_name(device)
    rows = []
    for label, cl, amp, compiled in variants(device, args.compile):
        ips = measure(cfg, device, args.batch_size, cl, amp, args.steps, args.warmup, compiled)
        rows.append({"variant": label, "images_per_s": round(ips, 1)})
    base = rows[0]["images_per_s"]
    print(f"training step, {args.config} ({describe_model(cfg.model)} "
          f"{cfg.data.image_size}px), batch {args.batch_size}, {name}, {torch.get_num_threads()} threads")
    for r in rows:
        r["ratio_vs_fp32"] = round(r["images_per_s"] / base, 2)
        print(f"  {r['variant']:<28} {r['images_per_s']:>9.1f} img/s  x{r['ratio_vs_fp32']:.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"config": args.config, "overrides": args.overrides,
                                               "batch": args.batch_size, "device": name,
                                               "torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
