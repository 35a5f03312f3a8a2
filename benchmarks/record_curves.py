"""Record real learning curves over a spec's space: the table `bench_search_efficiency.py` replays.

    python benchmarks/record_curves.py --data /tmp/curves_data --out benchmarks/results/curves.json \\
        --configs 24 --replicates 8 --epochs 8 --poses 700 --threads 1 | tee /tmp/record_curves.log
    python benchmarks/record_curves.py --data /tmp/curves_data --out /tmp/pilot.json --configs 1 \\
        --replicates 0 --epochs 1 --poses 700          # a pilot: one epoch, to size the real run

Each configuration is the spec's trial (`trial_config(spec, params)`: the `quick` spec's `small`
preset with its fixed values) trained by the core `Trainer`, no Ray: `--epochs` epochs on the
training split of one synthetic dataset (`--poses` poses x 4 colour versions, rendered once when
`--data` is missing; `data.val_fraction` of the poses held out, the same split for every run), the
plain validation metrics after every epoch. Per epoch it keeps pa_mpjpe_mm, rr_mpjpe_mm,
mpjpe_mm, train_loss, the epoch's seconds (training + validation) and the training images seen.

The design is a sliced Latin hypercube (Qian 2012), seeded: the categorical parameters' full
factorial (6 cells for `quick`), `--configs / cells` configurations in each cell, and every
continuous parameter (the log learning rate) split into `--configs` equal strata with each used
exactly once overall and once per slice of `cells` strata within each cell, jittered inside its
stratum. So the learning rate is spread evenly both over the whole table and within every cell,
and a replayed searcher's suggestion maps to a recorded neighbour at most about one stratum away.

`--replicates R` configurations (one per cell in turn) are trained again with train.seed = 1
(another init and data order, same split): the run-to-run noise of one configuration. All first
seeds run before any replicate, so a table cut short still covers the whole design. The JSON is
rewritten after every run (atomically) and a rerun skips the (config, seed) pairs it already
holds, so an interrupted recording resumes where it stopped.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tune_hand.sweep import load_spec
from tune_hand.sweep.space import trial_config
from tune_hand.training import Trainer

ROOT = Path(__file__).resolve().parents[1]


# -- the design --------------------------------------------------------------------------------
def design(spec, n: int, seed: int) -> list[dict]:
    """`n` parameter sets: a sliced Latin hypercube (categorical factorial x continuous strata)."""
    cats = [p for p in spec.space if p.type == "categorical"]
    conts = [p for p in spec.space if p.type != "categorical"]
    if any(p.when for p in spec.space):
        raise SystemExit(f"{spec.source}: conditional parameters are not supported by this design")
    cells = list(itertools.product(*[p.values for p in cats]))
    if n % len(cells):
        raise SystemExit(f"--configs {n}: must be a multiple of the {len(cells)} categorical cells")
    per_cell = n // len(cells)
    rng = np.random.default_rng(seed)
    # strata[d][slot, cell]: slice `slot` holds strata slot*cells .. slot*cells + cells - 1
    strata = [np.stack([slot * len(cells) + rng.permutation(len(cells)) for slot in range(per_cell)])
              for _ in conts]
    out = []
    for slot in range(per_cell):
        for c, cell in enumerate(cells):
            params = {p.key: _plain(v) for p, v in zip(cats, cell)}
            for d, p in enumerate(conts):
                u = (strata[d][slot, c] + rng.uniform()) / n
                params[p.key] = _from_unit(p, u)
            out.append({"id": f"c{len(out):02d}", "cell": c, "params": dict(sorted(params.items()))})
    return out


def _from_unit(p, u: float) -> float:
    lo, hi = float(p.low), float(p.high)
    if p.type == "loguniform":
        x = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    else:
        x = lo + u * (hi - lo)
    return round(x) if p.integer else float(f"{x:.6g}")


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def replicate_ids(configs: list[dict], r: int, seed: int) -> list[str]:
    """`r` configurations to train twice: one per cell in a seeded order, round after round."""
    rng = np.random.default_rng(seed + 1)
    by_cell: dict[int, list[str]] = {}
    for c in configs:
        by_cell.setdefault(c["cell"], []).append(c["id"])
    picked = []
    while len(picked) < min(r, len(configs)):
        for cell in rng.permutation(sorted(by_cell)):
            left = [i for i in by_cell[int(cell)] if i not in picked]
            if left and len(picked) < r:
                picked.append(left[0])
    return picked


# -- one run -----------------------------------------------------------------------------------
def record_run(spec, params: dict, data: Path, epochs: int, seed: int, val_fraction: float, threads: int,
               log) -> dict:
    cfg = trial_config(spec, params)
    cfg.optim.epochs = epochs
    cfg.train.seed = seed
    cfg.train.threads = threads
    cfg.train.device = "cpu"
    cfg.data.val_fraction = val_fraction
    cfg.data.num_workers = 0
    t0 = time.perf_counter()
    trainer = Trainer(cfg, data)
    setup = time.perf_counter() - t0
    rows = []
    for r in trainer.epochs():
        rows.append({"epoch": r.epoch, "pa_mpjpe_mm": _r(r.val.get("pa_mpjpe_mm")),
                     "rr_mpjpe_mm": _r(r.val.get("rr_mpjpe_mm")), "mpjpe_mm": _r(r.val.get("mpjpe_mm")),
                     "train_loss": _r(r.train_loss, 2), "seconds": round(r.seconds, 2),
                     "images": len(trainer.train_idx) * r.epoch, "status": r.status})
        log(f"    epoch {r.epoch}: PA {rows[-1]['pa_mpjpe_mm']} rr {rows[-1]['rr_mpjpe_mm']} "
            f"loss {rows[-1]['train_loss']} ({r.seconds:.1f}s, {r.images_per_s:.0f} img/s)")
    return {"setup_seconds": round(setup, 2), "train_images_per_epoch": len(trainer.train_idx),
            "val_images": len(trainer.val_idx), "status": trainer.status, "epochs": rows}


def _r(x, nd: int = 3):
    return None if x is None or not math.isfinite(x) else round(float(x), nd)


# -- the table ---------------------------------------------------------------------------------
def provenance(args, data_params: dict) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "tune_hand", "search_spaces"], cwd=ROOT,
                                    capture_output=True, text=True, check=False).stdout.strip())
    except OSError:
        commit, dirty = "unknown", None
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"commit": commit, "tune_hand_dirty": dirty,
            "command": "python benchmarks/record_curves.py " + " ".join(sys.argv[1:]),
            "machine": {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": args.threads,
                        "torch": torch.__version__, "python": platform.python_version()},
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "dataset": data_params}


def ensure_data(data: Path, poses: int, n_eval: int, seed: int, workers: int) -> dict:
    if not (data / "training_K.json").exists():
        from tune_hand.data.synth.write import render_dataset

        s = render_dataset(data, n_train=poses, n_eval=n_eval, seed=seed, with_mesh_files=False, workers=workers)
        print(f"rendered {s['train_images']} + {s['eval_images']} images in {s['seconds']:.0f}s -> {data}", flush=True)
    n = len(json.loads((data / "training_xyz.json").read_text()))
    return {"dir": str(data), "poses": n, "versions": 4, "render_seed": seed, "renderer": "tune_hand.data.synth"}


def write_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset dir (rendered when missing)")
    parser.add_argument("--out", required=True, help="the curves JSON (resumed when it exists)")
    parser.add_argument("--spec", default="quick")
    parser.add_argument("--configs", type=int, default=24)
    parser.add_argument("--replicates", type=int, default=8, help="configs also trained with train.seed=1")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--poses", type=int, default=700, help="poses to render when --data is missing")
    parser.add_argument("--eval", type=int, default=8, help="evaluation images to render (not used here)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--design-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    spec = load_spec(args.spec)
    data = Path(args.data)
    data_params = ensure_data(data, args.poses, args.eval, seed=0, workers=args.threads)
    data_params["val_fraction"] = args.val_fraction
    configs = design(spec, args.configs, args.design_seed)
    reps = replicate_ids(configs, args.replicates, args.design_seed)
    out = Path(args.out)
    table = json.loads(out.read_text()) if out.exists() else {}
    done = {c["id"]: c for c in table.get("configs", [])}
    for c in configs:
        old = done.get(c["id"])
        if old and old["params"] != c["params"]:
            raise SystemExit(f"{out}: holds another design ({c['id']}: {old['params']} != {c['params']}); "
                             "pass another --out or the same --configs/--design-seed")
        c["seeds"] = old["seeds"] if old else {}
        c["replicate"] = c["id"] in reps
    table = {"provenance": table.get("provenance") or provenance(args, data_params),
             "spec": spec.name, "metric": spec.metric, "mode": spec.mode,
             "space": {p.key: p.to_dict() for p in spec.space},
             "design": {"kind": "sliced latin hypercube", "seed": args.design_seed, "configs": args.configs,
                        "replicates": reps, "epochs": args.epochs},
             "configs": configs}
    jobs = [(c, 0) for c in configs] + [(c, 1) for c in configs if c["replicate"]]
    t_all = time.perf_counter()
    for k, (c, seed) in enumerate(jobs):
        held = c["seeds"].get(str(seed))
        if held and len(held["epochs"]) >= args.epochs or held and held["status"] != "ok":
            continue
        print(f"[{k + 1}/{len(jobs)}] {c['id']} seed {seed} {c['params']}  (+{time.perf_counter() - t_all:.0f}s)",
              flush=True)
        c["seeds"][str(seed)] = record_run(spec, c["params"], data, args.epochs, seed, args.val_fraction,
                                           args.threads, lambda s: print(s, flush=True))
        write_atomic(out, table)
    write_atomic(out, table)
    print(f"done: {sum(len(c['seeds']) for c in configs)} runs in {out} (+{time.perf_counter() - t_all:.0f}s)")


if __name__ == "__main__":
    main()
