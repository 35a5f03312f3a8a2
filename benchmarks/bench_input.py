"""Input pipeline throughput per core: ours vs a per-item PIL pipeline like the paper's code vs bare
JPEG decode (the limit), on the same 224 px FreiHAND-layout JPEGs, side by side.

    python benchmarks/bench_input.py --json benchmarks/results/input.json

One process, one thread (cv2.setNumThreads(1), torch.set_num_threads(1)), so images/s is per core.
It renders a small synthetic FreiHAND dataset (tune_hand.data.synthetic) into a temporary directory,
then times pipelines that each produce one training item with a random rotation of up to +-180
degrees at the paper's 224 px input. It runs them in short interleaved rounds (each pipeline over the
same 32 items, in turn), so load from other work on a shared machine lands on all of them alike;
images/s is from the median round, and each ratio is the median of its per-round ratios.

- ours: `HandPoseDataset.__getitem__((position, aug_seed))` with the paper's augmentation, exactly
  what training runs: cv2 decode, one warpAffine, labels moved through the camera, uint8 (3, S, S).
  (Float conversion and normalisation happen later, on the device.)
- fix 1, 4-channel warp (a prototype, not the library): OpenCV 5.0's bilinear warpAffine is about
  twice as fast on 4-channel uint8 images as on 3-channel ones here. Converting the decode to RGBA
  (cvtColor BGR2RGBA, the same pass as BGR2RGB) and dropping the alpha plane in the (H, W, C) ->
  (C, H, W) copy that happens anyway gives bit-identical items (asserted).
- fix 1+2: also the per-item 3x3 algebra in closed form (see `ours_lean`); images within 1 grey
  level of ours, labels within 1e-3 mm (asserted, also at 64 px with flip/scale/translate on).
- fix 1+2 without the warp: not a training item; the CPU floor of a design that would warp the
  batch on the device instead.
- PIL, paper-style: Image.open(...).convert("RGB") -> .rotate(angle) (nearest, torchvision's
  RandomRotation default, which the authors kept) -> resize if the size differs -> to tensor
  (np.array -> CHW contiguous -> float / 255, as torchvision's ToTensor) -> per-item mean/std
  normalisation (clone, sub_, div_, as torchvision's Normalize); 3D points rotated in numpy.
  This is the reference for "x PIL".
- PIL, bilinear: the same with .rotate(angle, BILINEAR), the interpolation ours uses.
- PIL, naive normalise: the nearest pipeline normalising the non-contiguous CHW view out of place,
  as hand-written code often does; not the reference (torchvision's ToTensor copies to contiguous).
- bare decode: read the JPEG bytes from disk + cv2.imdecode. Nothing else; the limit.

Also reported, unless --no-loader: ours through `make_loader` with 1 worker process and batch 32
(the worker decodes, warps and collates; the main process only receives), in images/s. On this
2-core machine that worker has a core to itself; the figure includes collation and the pipe.

Targets (the issue): ours >= 3x the PIL pipeline per core, and >= 60% of bare decode.
Images are read from the page cache (the dataset is small and read repeatedly); a cold disk
would slow every pipeline by the same read cost.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before NumPy loads BLAS: one core, as stated
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
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
from tune_hand.data.augment import _ANTIALIAS_ABOVE, geometric_matrix, sample_params  # noqa: E402
from tune_hand.data.dataset import AugmentSampler, HandPoseDataset, make_loader  # noqa: E402
from tune_hand.data.freihand import FreiHAND  # noqa: E402
from tune_hand.data.synthetic import render_dataset  # noqa: E402
from tune_hand.geometry import apply_affine, backproject, project, resize_affine, rot_z  # noqa: E402

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
TARGET_X_PIL = 3.0
TARGET_OF_DECODE = 0.6
OURS = "ours (HandPoseDataset)"
FIX1 = "fix 1: 4-channel warp"
FIX2 = "fix 1+2: + closed-form 3x3 math"
FLOOR = "fix 1+2 without the warp (floor)"
REFERENCE = "PIL, paper-style (nearest)"
LIMIT = "bare decode (limit)"
LOADER = "ours, make_loader 1 worker, batch 32"


def keys(n: int, epoch: int) -> list[tuple[int, int]]:
    """(position, aug_seed) pairs as training draws them."""
    sampler = AugmentSampler(n, seed=0)
    sampler.set_epoch(epoch)
    return list(sampler)


def ours(dataset: HandPoseDataset):
    return lambda key: dataset[key]


def ours_rgba(dataset: HandPoseDataset, cfg: AugmentConfig, size: int):
    """Fix 1: HandPoseDataset.__getitem__ with a 4-channel warp; the library's own geometry and labels."""
    reader = dataset.reader

    def item(key):
        position, aug_seed = key
        index = int(dataset.indices[position])
        u = index % reader.num_unique
        K, xyz = reader.K[u], reader.xyz[u]
        image = cv2.cvtColor(cv2.imread(str(reader.image_path(index)), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGBA)
        params = sample_params(cfg, np.random.default_rng(aug_seed), size)
        w = image.shape[1]
        A = geometric_matrix(params, K, w, size)
        K_out = resize_affine(w, size) @ K
        shrink = 1.0 / np.linalg.svd(A[:2, :2], compute_uv=False)[-1]
        if shrink > _ANTIALIAS_ABOVE:
            image = cv2.GaussianBlur(image, (0, 0), sigmaX=(shrink - 1.0) / 2.0)
        out = cv2.warpAffine(image, A[:2], (size, size), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
        xyz_out = backproject(K_out, apply_affine(A, project(K, xyz)), xyz[..., 2])
        return {
            "image": torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)[:3])),
            "K": torch.from_numpy(K_out.astype(np.float32)),
            "xyz_mm": torch.from_numpy((xyz_out * 1000.0).astype(np.float32)),
            "index": index,
            "has_xyz": True,
        }

    return item


def ours_lean(dataset: HandPoseDataset, cfg: AugmentConfig, size: int, warp: bool = True):
    """Fix 1 + fix 2: the 4-channel warp, and the per-item 3x3 algebra in closed form.

    The affine is K @ M @ K^-1 with M = scale * rot_z(theta) * flip built from floats (one
    np.linalg.inv instead of three, no np.allclose, no rot_z stacking); the shrink factor is the
    2x2 block's smallest singular value by formula, not an SVD; labels are one 3x3 map,
    xyz' = (K_out^-1 @ A @ K) @ xyz, which is what project -> affine -> backproject computes
    when A's last row is (0, 0, 1). warp=False skips the warp (and its blur): the floor of a
    design that warps the batch on the device instead; its "image" is the unwarped input.
    """
    reader = dataset.reader
    paths = [str(reader.image_path(int(i))) for i in dataset.indices]

    def item(key):
        position, aug_seed = key
        index = int(dataset.indices[position])
        u = index % reader.num_unique
        K, xyz = reader.K[u], reader.xyz[u]
        image = cv2.cvtColor(cv2.imread(paths[position], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGBA)
        p = sample_params(cfg, np.random.default_rng(aug_seed), size)
        c, s, f = p.scale * math.cos(p.theta), p.scale * math.sin(p.theta), -1.0 if p.flip else 1.0
        M = np.array([[c * f, -s, 0.0], [s * f, c, 0.0], [0.0, 0.0, 1.0]])
        w = image.shape[1]
        R = resize_affine(w, size)
        K_out = R @ K
        R[:2, 2] += p.shift
        A = R @ K @ M @ np.linalg.inv(K)
        if warp:
            (a, b), (c2, d) = A[:2, :2].tolist()
            fro, det = a * a + b * b + c2 * c2 + d * d, a * d - b * c2
            sigma_min = math.sqrt(max(0.5 * (fro - math.sqrt(max(fro * fro - 4.0 * det * det, 0.0))), 1e-24))
            if 1.0 / sigma_min > _ANTIALIAS_ABOVE:
                image = cv2.GaussianBlur(image, (0, 0), sigmaX=(1.0 / sigma_min - 1.0) / 2.0)
            image = cv2.warpAffine(image, A[:2], (size, size), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
        xyz_out = xyz @ (np.linalg.inv(K_out) @ A @ K).T
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)[:3])),
            "K": torch.from_numpy(K_out.astype(np.float32)),
            "xyz_mm": torch.from_numpy((xyz_out * 1000.0).astype(np.float32)),
            "index": index,
            "has_xyz": True,
        }

    return item


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
        theta = sample_params(cfg, np.random.default_rng(aug_seed), size).theta
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


def check_prototypes(reader: FreiHAND, n: int = 16) -> dict:
    """The prototypes against the library on the same keys: images must match (fix 1 exactly; fix 2
    within 1 grey level, since its matrices may differ from the library's in the last bits), labels
    within 1e-3 mm. Checked at 224 px with the paper's rotation and at 64 px (the blur path) with
    every geometric op on. Returns the largest pixel difference seen per prototype."""
    worst = {FIX1: 0, FIX2: 0}
    all_on = AugmentConfig(flip=0.5, scale=0.2, translate=0.1)
    for cfg, size in ((AugmentConfig(), 224), (all_on, 64)):
        dataset = HandPoseDataset(reader, np.arange(len(reader)), size, cfg)
        for name, fn in ((FIX1, ours_rgba(dataset, cfg, size)), (FIX2, ours_lean(dataset, cfg, size))):
            for key in keys(len(dataset), epoch=0)[:n]:
                a, b = dataset[key], fn(key)
                diff = int((a["image"].int() - b["image"].int()).abs().max())
                worst[name] = max(worst[name], diff)
                assert diff <= (0 if name == FIX1 else 1), f"{name}: image differs by {diff} at {key}, {size}px"
                assert torch.allclose(a["K"], b["K"]), f"{name}: K differs at {key}"
                assert torch.allclose(a["xyz_mm"], b["xyz_mm"], atol=1e-3), f"{name}: labels differ at {key}"
    return worst


def interleaved(pipelines: dict, item_keys: list, rounds: int, chunk: int) -> dict:
    """Each round runs every pipeline, in turn, over the same `chunk` items (the next slice of the
    keys); per-round wall and CPU seconds. Short rounds keep each pipeline's time next to the
    others', so a burst of load from other work lands on one round of all of them."""
    for fn in pipelines.values():  # warm-up: page cache, imports, allocator
        for key in item_keys[:8]:
            fn(key)
    seconds = {name: {"wall": [], "cpu": []} for name in pipelines}
    starts = range(0, len(item_keys) - chunk + 1, chunk)
    for r in range(rounds):
        part = item_keys[starts[r % len(starts)]:][:chunk]
        for name, fn in pipelines.items():
            w0, c0 = time.perf_counter(), time.process_time()
            for key in part:
                fn(key)
            seconds[name]["wall"].append(time.perf_counter() - w0)
            seconds[name]["cpu"].append(time.process_time() - c0)
    return seconds


def loader_rate(dataset: HandPoseDataset, batch: int, epochs: int) -> float:
    """Images/s of make_loader with 1 worker process, after one warm-up epoch (the fork)."""
    sampler = AugmentSampler(len(dataset), seed=0)
    loader = make_loader(dataset, batch, 1, sampler=sampler, pin_memory=torch.cuda.is_available())
    for _ in loader:
        pass
    n = 0
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        sampler.set_epoch(epoch)
        for b in loader:
            n += len(b["image"])
    rate = n / (time.perf_counter() - start)
    del loader
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=32, help="unique samples to render (4 images each)")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--chunk", type=int, default=32, help="items per pipeline per round")
    p.add_argument("--loader-epochs", type=int, default=6)
    p.add_argument("--no-loader", action="store_true")
    p.add_argument("--json")
    args = p.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    size = 224  # the paper's input, FreiHAND's image size
    cfg = AugmentConfig()  # the paper's: rotation +-180 degrees, nothing else
    with tempfile.TemporaryDirectory(prefix="bench_input_") as tmp:
        root = Path(tmp) / "freihand"
        render_dataset(root, args.samples, 0, seed=0, image_size=size, with_mesh_files=False)
        reader = FreiHAND(root, "training")
        dataset = HandPoseDataset(reader, np.arange(len(reader)), size, cfg)
        item_keys = keys(len(dataset), epoch=0)
        pipelines = {
            OURS: ours(dataset),
            FIX1: ours_rgba(dataset, cfg, size),
            FIX2: ours_lean(dataset, cfg, size),
            FLOOR: ours_lean(dataset, cfg, size, warp=False),
            REFERENCE: pil_paper_style(dataset, cfg, size, Image.NEAREST),
            "PIL, bilinear": pil_paper_style(dataset, cfg, size, Image.BILINEAR),
            "PIL, nearest, naive normalise": pil_paper_style(dataset, cfg, size, Image.NEAREST, naive=True),
            LIMIT: bare_decode(dataset),
        }
        worst = check_prototypes(reader)
        secs = interleaved(pipelines, item_keys, args.rounds, args.chunk)
        loader = None if args.no_loader else loader_rate(dataset, 32, args.loader_epochs)

    # Rates from the median round; ratios are medians of per-round ratios (side by side in time).
    rate = {n: args.chunk / statistics.median(t["wall"]) for n, t in secs.items()}
    rate_cpu = {n: args.chunk / statistics.median(t["cpu"]) for n, t in secs.items()}

    def ratio(name: str, base: str) -> float:
        return statistics.median(b / a for a, b in zip(secs[name]["wall"], secs[base]["wall"], strict=True))

    print(f"input pipeline, {size}px JPEGs ({len(dataset)} images; {args.rounds} interleaved rounds of {args.chunk} "
          f"items; medians), 1 thread, {platform.processor() or 'cpu'}, OpenCV {cv2.__version__}, "
          f"Pillow {PIL.__version__}")
    print(f"  {'pipeline':<36} {'img/s/core':>10} {'CPU time':>9} {'x PIL':>7} {'of decode':>9}")
    rows = []
    for name in pipelines:
        row = {"pipeline": name, "images_per_s": round(rate[name], 1), "images_per_cpu_s": round(rate_cpu[name], 1),
               "x_pil": round(ratio(name, REFERENCE), 3), "of_bare_decode": round(ratio(name, LIMIT), 3)}
        rows.append(row)
        print(f"  {name:<36} {row['images_per_s']:>10.0f} {row['images_per_cpu_s']:>9.0f} "
              f"{row['x_pil']:>6.2f}x {100 * row['of_bare_decode']:>8.0f}%")
    if loader is not None:  # not interleaved: ratios against the in-process medians
        ref, limit = rate[REFERENCE], rate[LIMIT]
        rows.append({"pipeline": LOADER, "images_per_s": round(loader, 1),
                     "x_pil": round(loader / ref, 3), "of_bare_decode": round(loader / limit, 3)})
        print(f"  {LOADER:<36} {loader:>10.0f} {'':>9} "
              f"{loader / ref:>6.2f}x {100 * loader / limit:>8.0f}%")
    targets = {}
    for name in (OURS, FIX1, FIX2):
        x_pil, of_dec = ratio(name, REFERENCE), ratio(name, LIMIT)
        targets[name] = {"x_pil": round(x_pil, 2), "x_pil_met": x_pil >= TARGET_X_PIL,
                         "of_bare_decode": round(of_dec, 3), "of_bare_decode_met": of_dec >= TARGET_OF_DECODE}
        print(f"  targets, {name:<31} >= {TARGET_X_PIL:g}x PIL: {x_pil:.2f}x "
              f"{'met' if x_pil >= TARGET_X_PIL else 'MISSED'}; >= {100 * TARGET_OF_DECODE:.0f}% of bare decode: "
              f"{100 * of_dec:.0f}% {'met' if of_dec >= TARGET_OF_DECODE else 'MISSED'}")
    print(f"  prototypes vs ours, largest pixel difference: {FIX1} {worst[FIX1]}, {FIX2} {worst[FIX2]} "
          "(grey levels; labels within 1e-3 mm)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "image_size": size, "images": len(dataset), "rounds": args.rounds, "chunk": args.chunk, "threads": 1,
            "cpu": platform.processor() or "cpu", "opencv": cv2.__version__, "pillow": PIL.__version__,
            "torch": torch.__version__, "reference": REFERENCE, "limit": LIMIT, "rows": rows,
            "targets": targets, "prototype_max_pixel_diff_vs_ours": worst}, indent=2))


if __name__ == "__main__":
    main()
