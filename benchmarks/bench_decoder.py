"""The decoder alone, both orderings of its separable block (model.separable_order), side by side:
parameters (asserted equal), MACs, forward and forward+backward time.

    python benchmarks/bench_decoder.py --json out.json                      # CPU: batch 4, channels_last
    python benchmarks/bench_decoder.py --memory-format both --batch-size 4
    python benchmarks/bench_decoder.py --device cuda --batch-size 32 --amp  # re-run on a GPU

Paper config: C=128, N=4 (kernel 4, split z), fed the b4 encoder's last-MBConv-block feature map
for a 224 px input (448 channels at 7x7, read from the encoder, not assumed), so the heatmaps have
112 bins. 'depthwise_first' is the authors' block (depthwise transposed conv, then the 1x1 at the
doubled resolution); 'pointwise_first' runs the 1x1 before up-sampling (DESIGN section 2).

Forward: eval mode under no_grad. Forward+backward: train mode, the loss a sum of the expected bin
indices, so every parameter gets a gradient. The orderings alternate within each repeat; times are
medians, and each speedup is the median of per-repeat ratios (the CPU machines are shared). The
"(CPU time)" column gives the same speedups (forward/forward+backward) from this process's CPU
seconds, which a busy machine disturbs less; use --threads 1 there (with more threads, OpenMP
waiting on a descheduled thread makes wall times erratic).

channels_last is the default because training uses it (train.channels_last); --memory-format both
adds NCHW. On CPU the two differ a lot: BatchNorm2d's backward at 112x112 is far slower in
channels_last there, and it costs the same in both orderings, so it dilutes the speedup.
On CPU the paper's batch 32 takes tens of seconds per forward+backward of depthwise_first, so the
CPU default is batch 4; say so when quoting. The CPU figures only stand in for the GPU, where the
trials run: re-run there (--device cuda, batch 32 by default, --amp for bf16 autocast as training
uses).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import device_name, model_bench_parser, model_bench_setup, sync  # noqa: E402
from tune_hand.config import SEPARABLE_ORDERS, load_config  # noqa: E402
from tune_hand.model import build_encoder  # noqa: E402
from tune_hand.model.decoder import HeatmapDecoder  # noqa: E402
from tune_hand.model.info import model_info  # noqa: E402


def build(cfg, order: str, in_channels: int, device, channels_last: bool) -> HeatmapDecoder:
    torch.manual_seed(0)
    m = cfg.model
    decoder = HeatmapDecoder(in_channels, channels=m.channels, blocks=m.blocks, separable=m.separable,
                             separable_order=order, kernel_size=m.kernel_size, split_z=m.split_z).to(device)
    return decoder.to(memory_format=torch.channels_last) if channels_last else decoder


def timed(fn, device) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one call."""
    sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - w0, time.process_time() - c0


def measure(decoders: dict, x: torch.Tensor, device, amp_dtype, repeats: int, warmup: int) -> dict:
    """{order: {"forward" | "train": [(wall, cpu), ...]}}, the orders alternating within each repeat."""
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    def forward(dec):
        dec.eval()
        with torch.no_grad(), autocast:
            dec(x)

    def train(dec):
        dec.train()
        with autocast:
            index, _ = dec(x)
        index.sum().backward()
        dec.zero_grad(set_to_none=True)

    out = {order: {"forward": [], "train": []} for order in decoders}
    for i in range(warmup + repeats):
        for order, dec in decoders.items():
            f, t = timed(partial(forward, dec), device), timed(partial(train, dec), device)
            if i >= warmup:
                out[order]["forward"].append(f)
                out[order]["train"].append(t)
    return out


def speedup(times: dict, kind: str, order: str, clock: int) -> float:
    """Median over repeats of depthwise_first's time / order's time in the same repeat."""
    pairs = zip(times["depthwise_first"][kind], times[order][kind], strict=True)
    return statistics.median(base[clock] / t[clock] for base, t in pairs)


def main() -> None:
    p = model_bench_parser(__doc__, config="paper", batch_size=0)  # batch 0: 32 on CUDA, 4 on CPU
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--amp", action="store_true", help="bf16 autocast (fp16 where bf16 is unsupported)")
    p.add_argument("--memory-format", choices=["channels_last", "contiguous", "both"], default="channels_last")
    args = p.parse_args()
    cfg, device = model_bench_setup(args)
    batch = args.batch_size or (32 if device.type == "cuda" else 4)
    amp_dtype = None
    if args.amp:
        amp_dtype = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    size = cfg.data.image_size
    with torch.device("meta"):  # the encoder's output shape, without building its weights
        in_channels = build_encoder(cfg.model, size).out_channels
    spatial = size // 32
    formats = ["channels_last", "contiguous"] if args.memory_format == "both" else [args.memory_format]
    info = {o: model_info(load_config(args.config, args.overrides + [f"model.separable_order={o}"]), size)
            for o in SEPARABLE_ORDERS}

    name = device_name(device)
    precision = str(amp_dtype).split(".")[-1] + " autocast" if amp_dtype else "fp32"
    m = cfg.model
    print(f"decoder alone, {args.config}: C={m.channels} N={m.blocks} k={m.kernel_size} split_z={m.split_z}, "
          f"input ({batch}, {in_channels}, {spatial}, {spatial}) = {m.encoder} last block at {size}px, "
          f"{2 ** m.blocks * spatial} bins; {name}, {torch.get_num_threads()} threads, {precision}; "
          f"median of {args.repeats}")
    rows = []
    for fmt in formats:
        channels_last = fmt == "channels_last"
        x = torch.randn(batch, in_channels, spatial, spatial, device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        decoders = {o: build(cfg, o, in_channels, device, channels_last) for o in SEPARABLE_ORDERS}
        params = {o: sum(q.numel() for q in d.parameters()) for o, d in decoders.items()}
        assert len(set(params.values())) == 1, f"parameter counts differ: {params}"
        for o in SEPARABLE_ORDERS:
            assert params[o] == info[o]["params_decoder"], (params[o], info[o]["params_decoder"])
        times = measure(decoders, x, device, amp_dtype, args.repeats, args.warmup)
        print(f"  {fmt}:")
        print(f"    {'separable_order':<17} {'params':>10} {'GMACs/img':>9} {'fwd ms':>9} {'speedup':>7} "
              f"{'fwd+bwd ms':>10} {'speedup':>7} {'(CPU time)':>10} {'train img/s':>11}")
        for o in SEPARABLE_ORDERS:
            fwd = statistics.median(w for w, _ in times[o]["forward"])
            train = statistics.median(w for w, _ in times[o]["train"])
            row = {"memory_format": fmt, "separable_order": o, "params": params[o],
                   "gmacs_per_image": round(info[o]["macs_decoder"] / 1e9, 3),
                   "forward_ms": round(1000 * fwd, 2), "forward_speedup": round(speedup(times, "forward", o, 0), 3),
                   "forward_speedup_cpu_time": round(speedup(times, "forward", o, 1), 3),
                   "train_ms": round(1000 * train, 2), "train_speedup": round(speedup(times, "train", o, 0), 3),
                   "train_speedup_cpu_time": round(speedup(times, "train", o, 1), 3),
                   "train_images_per_s": round(batch / train, 2),
                   "forward_ms_runs": [round(1000 * w, 2) for w, _ in times[o]["forward"]],
                   "train_ms_runs": [round(1000 * w, 2) for w, _ in times[o]["train"]]}
            rows.append(row)
            print(f"    {o:<17} {row['params']:>10,} {row['gmacs_per_image']:>9.3f} {row['forward_ms']:>9.1f} "
                  f"{row['forward_speedup']:>6.2f}x {row['train_ms']:>10.1f} {row['train_speedup']:>6.2f}x "
                  f"{row['forward_speedup_cpu_time']:>4.2f}/{row['train_speedup_cpu_time']:.2f}x "
                  f"{row['train_images_per_s']:>11.1f}")
        fast = rows[-1]
        met = fast["forward_speedup"] >= 1.5 and fast["train_speedup"] >= 1.5
        print(f"    target pointwise_first >= 1.5x faster, same parameters: forward {fast['forward_speedup']:.2f}x, "
              f"forward+backward {fast['train_speedup']:.2f}x -> {'met' if met else 'MISSED'}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "config": args.config, "overrides": args.overrides, "model": dataclasses.asdict(cfg.model),
            "input_shape": [batch, in_channels, spatial, spatial], "device": name, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "precision": precision, "repeats": args.repeats,
            "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
