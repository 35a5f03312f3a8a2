"""Input pipeline throughput per core: ours vs a per-item PIL pipeline like the paper's code vs bare
JPEG decode (the limit), on the same 224 px FreiHAND-layout JPEGs, side by side.

    python benchmarks/bench_input.py --json benchmarks/results/input.json

One process, one thread (cv2.setNumThreads(1), torch.set_num_threads(1)), so images/s is per core.
It renders a small synthetic FreiHAND dataset (tune_hand.data.synthetic) into a temporary directory,
then times pipelines that each produce one training item with a random rotation of up to +-180
degrees at the paper's 224 px input. It runs them in short interleaved rounds (each pipeline over the
same 32 items, in turn), so load from other work on a shared machine lands on all of them alike;
images/s is from the median round, and each ratio is the median of its per-round ratios.

Ours, four variants of `HandPoseDataset.__getitem__((position, aug_seed))` with the paper's
augmentation (the library itself, not a copy):
- ours, CPU warp: what training runs by default: cv2 decode straight to RGB, the closed-form affine and
  labels, one 4-channel warpAffine split into the uint8 (3, S, S) planes. Float conversion and
  normalisation happen later, on the device.
- ours + decoded cache, CPU warp: the same, reading the decoded image from the mapped uint8 cache file
  (`data.cache`) instead of decoding the JPEG; pixels identical (asserted).
- ours, device warp, loader side: `data.device_warp`: the item is the decoded image plus its affine,
  colour matrix and blur sigma; the warp runs later, batched on the training device. This row is the
  CPU work per image of that design; the warp itself is the next row's cost, on the GPU instead.
- ours, device warp + cache, loader side: both: the item copies the cached image out of the mapping.
- device warp itself (`finish_on_device`), torch on THIS CPU, batch 32: the cost that the device-warp
  rows move to the GPU, measured here on one CPU core for scale only (a GPU does it in microseconds).
  Batches equal the CPU warp's within 3 grey levels, labels exactly (asserted).

References:
- PIL, paper-style: Image.open(...).convert("RGB") -> .rotate(angle) (nearest, torchvision's
  RandomRotation default, which the authors kept) -> resize if the size differs -> to tensor
  (np.array -> CHW contiguous -> float / 255, as torchvision's ToTensor) -> per-item mean/std
  normalisation (clone, sub_, div_, as torchvision's Normalize); 3D points rotated in numpy.
  This is the reference for "x PIL".
- PIL, bilinear: the same with .rotate(angle, BILINEAR), the interpolation ours uses.
- PIL, naive normalise: the nearest pipeline normalising the non-contiguous CHW view out of place,
  as hand-written code often does; not the reference (torchvision's ToTensor copies to contiguous).
- bare decode: read the JPEG bytes from disk + cv2.imdecode. Nothing else; the limit.

Also reported, unless --no-loader: each variant of ours through `make_loader` with 1 worker process and
batch 32 (the worker reads, warps or not, and collates; the main process only receives), in images/s,
not interleaved (ratios against the interleaved medians). On this 2-core machine that worker has a
core to itself; the figure includes collation and the pipe.

Targets (the issue): ours >= 3x the PIL pipeline per core, and >= 60% of bare decode.
Images are read from the page cache (the dataset is small and read repeatedly); a cold disk
would slow every pipeline but the cached ones by the same read cost.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before NumPy loads BLAS: one core, as stated
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import PIL  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tune_hand.config import AugmentConfig  # noqa: E402
from tune_hand.data.augment import sample_params  # noqa: E402
from tune_hand.data.cache import open_cache  # noqa: E402
from tune_hand.data.dataset import (AugmentSampler, HandPoseDataset, _item_rng,  # noqa: E402
                                    finish_on_device, make_loader)
from tune_hand.data.freihand import FreiHAND  # noqa: E402
from tune_hand.data.synthetic import render_dataset  # noqa: E402
from tune_hand.geometry import rot_z  # noqa: E402

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
TARGET_X_PIL = 3.0
TARGET_OF_DECODE = 0.6
OURS = "ours, CPU warp"
CACHED = "ours + decoded cache, CPU warp"
DEVICE = "ours, device warp, loader side"
DEVICE_CACHED = "ours, device warp + cache, loader side"
WARP_ON_CPU = "device warp itself, torch on this CPU"
VARIANTS = (OURS, CACHED, DEVICE, DEVICE_CACHED)
REFERENCE = "PIL, paper-style (nearest)"
LIMIT = "bare decode (limit)"


def keys(n: int, epoch: int) -> list[tuple[int, int]]:
    """(position, aug_seed) pairs as training draws them."""
    sampler = AugmentSampler(n, seed=0)
    sampler.set_epoch(epoch)
    return list(sampler)


def per_item(fn):
    """A pipeline over a chunk of keys, one item at a time."""
    def run(chunk):
        for key in chunk:
            fn(key)
    return run


def device_warp_on_cpu(dataset: HandPoseDataset, item_keys: list, chunk: int):
    """finish_on_device on this CPU over the chunk's collated device-warp batch, collated beforehand
    (the loader side is timed by its own row)."""
    batches = {}
    for start in range(0, len(item_keys) - chunk + 1, chunk):
        part = item_keys[start:start + chunk]
        batches[tuple(part)] = torch.utils.data.default_collate([dataset[k] for k in part])
    cpu = torch.device("cpu")
    return lambda part: finish_on_device(batches[tuple(part)], cpu, dataset.image_size)


def pil_paper_style(dataset: HandPoseDataset, cfg: AugmentConfig, size: int, resample, naive: bool = False):
    """The authors' shape: PIL open, rotate, to tensor, normalise, per item. Same angles as ours.

    To tensor and normalise do what torchvision's ToTensor and Normalize do (a contiguous CHW copy,
    then a clone normalised in place). naive=True normalises the permuted (non-contiguous) view out
    of place instead: several times slower, shown to explain slower PIL figures, never the reference.
    """
    reader = dataset.reader

    def item(key):
        position, aug_seed = key
        index = int(dataset.indices[position])
        u = index % reader.num_unique
        theta = sample_params(cfg, _item_rng(aug_seed), size).theta  # the angle ours draws
        img = Image.open(reader.image_path(index)).convert("RGB")
        img = img.rotate(np.rad2deg(theta), resample=resample)
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        if naive:
            x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255.0)
            x = (x - MEAN) / STD
        else:
            x = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous().float().div(255.0)  # ToTensor
            x = x.clone().sub_(MEAN).div_(STD)  # Normalize
        xyz = reader.xyz[u] @ rot_z(theta).T
        return {"image": x, "K": torch.from_numpy(reader.K[u].astype(np.float32)),
                "xyz_mm": torch.from_numpy((xyz * 1000.0).astype(np.float32))}

    return item


def bare_decode(dataset: HandPoseDataset):
    paths = [str(dataset.reader.image_path(int(i))) for i in dataset.indices]

    def item(key):
        with open(paths[key[0]], "rb") as f:
            data = f.read()
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)

    return item


def check_variants(datasets: dict, n: int = 32) -> dict:
    """Every variant against the CPU path on the same keys, at 224 px with the paper's rotation and at 64 px
    with every op on (the blur path): the cached CPU warp gives identical items; the device warp (run here
    on the CPU) images within 3 grey levels and identical labels. Returns the largest pixel difference."""
    worst = {name: 0 for name in datasets}
    cpu = torch.device("cpu")
    for name, (reference, variant) in datasets.items():
        part = keys(len(reference), epoch=0)[:n] + [0, 1]
        a = torch.utils.data.default_collate([reference[k] for k in part])
        b = torch.utils.data.default_collate([variant[k] for k in part])
        if variant.device_warp:
            b = finish_on_device(b, cpu, variant.image_size)
        diff = int((a["image"].int() - b["image"].int()).abs().max())
        worst[name] = diff
        assert diff <= (3 if variant.device_warp else 0), f"{name}: image differs by {diff}"
        for key in ("K", "xyz_mm", "index"):
            assert torch.equal(a[key], b[key]), f"{name}: {key} differs"
    return worst


def interleaved(pipelines: dict, item_keys: list, rounds: int, chunk: int) -> dict:
    """Each round runs every pipeline, in turn, over the same `chunk` items (the next slice of the
    keys; a pipeline takes the whole slice); per-round wall and CPU seconds. Short rounds keep each
    pipeline's time next to the others', so a burst of load from other work lands on one round of all
    of them."""
    for run in pipelines.values():  # warm-up: page cache, imports, allocator
        run(item_keys[:chunk])
    seconds = {name: {"wall": [], "cpu": []} for name in pipelines}
    starts = range(0, len(item_keys) - chunk + 1, chunk)
    for r in range(rounds):
        part = item_keys[starts[r % len(starts)]:][:chunk]
        for name, run in pipelines.items():
            w0, c0 = time.perf_counter(), time.process_time()
            run(part)
            seconds[name]["wall"].append(time.perf_counter() - w0)
            seconds[name]["cpu"].append(time.process_time() - c0)
    return seconds


def loader_rate(dataset: HandPoseDataset, batch: int, epochs: int) -> float:
    """Images/s of make_loader with 1 worker process, after one warm-up epoch (the fork). Device-warp
    batches are counted as they leave the loader (their warp is the device's)."""
    sampler = AugmentSampler(len(dataset), seed=0)
    loader = make_loader(dataset, batch, 1, sampler=sampler, pin_memory=torch.cuda.is_available())
    for _ in loader:
        pass
    n = 0
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        sampler.set_epoch(epoch)
        for b in loader:
            n += len(b["index"])
    rate = n / (time.perf_counter() - start)
    del loader
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=32, help="unique samples to render (4 images each)")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--chunk", type=int, default=32, help="items per pipeline per round (and the warp's batch)")
    p.add_argument("--loader-epochs", type=int, default=6)
    p.add_argument("--no-loader", action="store_true")
    p.add_argument("--json")
    args = p.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    size = 224  # the paper's input, FreiHAND's image size
    cfg = AugmentConfig()  # the paper's: rotation +-180 degrees, nothing else
    all_on = AugmentConfig(flip=0.5, scale=0.2, translate=0.1, color_jitter=0.3)
    with tempfile.TemporaryDirectory(prefix="bench_input_") as tmp:
        root = Path(tmp) / "freihand"
        render_dataset(root, args.samples, 0, seed=0, image_size=size, with_mesh_files=False)
        reader = FreiHAND(root, "training")
        cache = open_cache(reader, Path(tmp) / "cache", log=lambda message: None)

        def dataset(name: str, image_size: int, augment: AugmentConfig) -> HandPoseDataset:
            return HandPoseDataset(reader, np.arange(len(reader)), image_size, augment,
                                   cache=cache if "cache" in name else None, device_warp="device" in name)

        variants = {name: dataset(name, size, cfg) for name in VARIANTS}
        worst = check_variants({f"{name}, {s}px": (dataset(OURS, s, c), dataset(name, s, c))
                                for c, s in ((cfg, size), (all_on, 64)) for name in VARIANTS[1:]})
        item_keys = keys(len(reader), epoch=0)
        pipelines = {
            **{name: per_item(variants[name].__getitem__) for name in VARIANTS},
            WARP_ON_CPU: device_warp_on_cpu(variants[DEVICE], item_keys, args.chunk),
            REFERENCE: per_item(pil_paper_style(variants[OURS], cfg, size, Image.NEAREST)),
            "PIL, bilinear": per_item(pil_paper_style(variants[OURS], cfg, size, Image.BILINEAR)),
            "PIL, nearest, naive normalise": per_item(pil_paper_style(variants[OURS], cfg, size, Image.NEAREST,
                                                                      naive=True)),
            LIMIT: per_item(bare_decode(variants[OURS])),
        }
        secs = interleaved(pipelines, item_keys, args.rounds, args.chunk)
        loaders = {} if args.no_loader else {name: loader_rate(variants[name], 32, args.loader_epochs)
                                             for name in VARIANTS}

    # Rates from the median round; ratios are medians of per-round ratios (side by side in time).
    rate = {n: args.chunk / statistics.median(t["wall"]) for n, t in secs.items()}
    rate_cpu = {n: args.chunk / statistics.median(t["cpu"]) for n, t in secs.items()}

    def ratio(name: str, base: str, clock: str = "wall") -> float:
        return statistics.median(b / a for a, b in zip(secs[name][clock], secs[base][clock], strict=True))

    print(f"input pipeline, {size}px JPEGs ({len(reader)} images; {args.rounds} interleaved rounds of {args.chunk} "
          f"items; medians), 1 thread, {platform.processor() or 'cpu'}, OpenCV {cv2.__version__}, "
          f"Pillow {PIL.__version__}, torch {torch.__version__}")
    print("  wall: images per second of elapsed time; CPU: per second of this process's CPU time (what a core\n"
          "  of its own would give; on a shared machine the wall figures include waiting for a core)")
    width = 56
    print(f"  {'pipeline':<{width}} {'img/s wall':>10} {'img/s CPU':>9} {'x PIL':>6} {'of decode':>9} "
          f"{'x PIL CPU':>9} {'of dec CPU':>10}")
    rows = []
    for name in pipelines:
        row = {"pipeline": name, "images_per_s": round(rate[name], 1), "images_per_cpu_s": round(rate_cpu[name], 1),
               "x_pil": round(ratio(name, REFERENCE), 3), "of_bare_decode": round(ratio(name, LIMIT), 3),
               "x_pil_cpu": round(ratio(name, REFERENCE, "cpu"), 3),
               "of_bare_decode_cpu": round(ratio(name, LIMIT, "cpu"), 3)}
        rows.append(row)
        print(f"  {name:<{width}} {row['images_per_s']:>10.0f} {row['images_per_cpu_s']:>9.0f} "
              f"{row['x_pil']:>5.2f}x {100 * row['of_bare_decode']:>8.0f}% "
              f"{row['x_pil_cpu']:>8.2f}x {100 * row['of_bare_decode_cpu']:>9.0f}%")
    ref, limit = rate[REFERENCE], rate[LIMIT]
    for name, loader in loaders.items():  # not interleaved: ratios against the in-process medians
        label = f"{name}, make_loader 1 worker, batch 32"
        rows.append({"pipeline": label, "images_per_s": round(loader, 1),
                     "x_pil": round(loader / ref, 3), "of_bare_decode": round(loader / limit, 3)})
        print(f"  {label:<{width}} {loader:>10.0f} {'':>9} {loader / ref:>5.2f}x {100 * loader / limit:>8.0f}%")
    targets = {}
    for name in VARIANTS:
        targets[name] = {}
        verdicts = []
        for clock in ("wall", "cpu"):
            x_pil, of_dec = ratio(name, REFERENCE, clock), ratio(name, LIMIT, clock)
            suffix = "" if clock == "wall" else "_cpu"
            targets[name].update({
                f"x_pil{suffix}": round(x_pil, 2), f"x_pil{suffix}_met": x_pil >= TARGET_X_PIL,
                f"of_bare_decode{suffix}": round(of_dec, 3), f"of_bare_decode{suffix}_met": of_dec >= TARGET_OF_DECODE})
            verdicts.append(f"{clock} {x_pil:5.2f}x PIL {'met' if x_pil >= TARGET_X_PIL else 'MISSED'}, "
                            f"{100 * of_dec:3.0f}% of decode {'met' if of_dec >= TARGET_OF_DECODE else 'MISSED'}")
        print(f"  targets (>= {TARGET_X_PIL:g}x PIL, >= {100 * TARGET_OF_DECODE:.0f}% of decode), {name:<40} "
              + "; ".join(verdicts))
    print("  variants vs the CPU warp, largest pixel difference (grey levels; K and labels identical): "
          + ", ".join(f"{name} {diff}" for name, diff in worst.items()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "image_size": size, "images": len(reader), "rounds": args.rounds, "chunk": args.chunk, "threads": 1,
            "cpu": platform.processor() or "cpu", "opencv": cv2.__version__, "pillow": PIL.__version__,
            "torch": torch.__version__, "reference": REFERENCE, "limit": LIMIT, "rows": rows,
            "targets": targets, "max_pixel_diff_vs_cpu_warp": worst}, indent=2))


if __name__ == "__main__":
    main()
