"""A training run on disk, as `tune-hand train` writes it.

    OUT/config.yaml        the full config of the run
    OUT/checkpoint.pt      the latest full-state checkpoint (resume from here)
    OUT/best.pt            the checkpoint of the best validation epoch
    OUT/metrics.jsonl      one line of metrics per epoch
    OUT/tb/                TensorBoard scalars, prediction and heatmap images (tensorboardX)

Every file is replaced atomically, so a run killed at any moment resumes from its last
complete epoch.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from typing import Callable

from .checkpoint import FILENAME, checkpoint_config, load_checkpoint, save_checkpoint
from .config import Config, apply_overrides
from .errors import TuneHandError
from .io import atomic_write
from .tb import log_images, should_log_images
from .training import EpochResult, Trainer

BEST = "best.pt"


def start_run(cfg: Config, data_dir: str | Path | None, out: str | Path, resume: bool = False,
              overrides: list[str] | None = None) -> Trainer:
    """A Trainer for a new run in `out`, or for the run saved there (`resume=True`)."""
    out = Path(out)
    latest = out / FILENAME
    if resume:
        if not latest.is_file():
            raise TuneHandError(f"{latest}: nothing to resume (no checkpoint in {out})")
        state = load_checkpoint(latest)
        # The run continues with its own config; --set may change it (e.g. optim.epochs).
        cfg = apply_overrides(checkpoint_config(state, latest), overrides)
        trainer = Trainer(cfg, data_dir or cfg.data.dir)
        trainer.restore(state)
        return trainer
    if latest.exists():
        raise TuneHandError(f"{out}: already holds a run (checkpoint.pt); pass --resume to continue it "
                            "or choose another --out")
    trainer = Trainer(cfg, data_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer.cfg.to_yaml(out / "config.yaml")
    return trainer


def run(trainer: Trainer, out: str | Path, on_epoch: Callable[[EpochResult], None] | None = None) -> EpochResult | None:
    """Train to the end of the budget, checkpointing every epoch; returns the last result."""
    from tensorboardX import SummaryWriter

    out = Path(out)
    last = None
    writer = SummaryWriter(str(out / "tb"))
    try:
        for result in trainer.epochs():
            last = result
            state = trainer.state_dict()
            save_checkpoint(out / FILENAME, state)
            if result.is_best:
                shutil.copyfile(out / FILENAME, out / f".{BEST}.tmp")
                (out / f".{BEST}.tmp").replace(out / BEST)
            _append_jsonl(out / "metrics.jsonl", result.metrics())
            for key, value in result.metrics().items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    writer.add_scalar(_tb_name(key), value, result.epoch)
            if should_log_images(result.epoch, trainer.cfg.optim.epochs, trainer.cfg.train.image_every):
                log_images(writer, trainer, result.epoch)
            writer.flush()
            if on_epoch:
                on_epoch(result)
    finally:
        writer.close()
    return last


def _tb_name(key: str) -> str:
    if key in ("train_loss", "lr", "images_per_s", "seconds"):
        return f"train/{key}"
    return f"val/{key}"


def _append_jsonl(path: Path, row: dict) -> None:
    lines = path.read_text() if path.exists() else ""
    # Rewrite atomically so a crash never leaves a torn last line; files are tiny (one line an epoch).
    kept = [ln for ln in lines.splitlines() if ln.strip() and json.loads(ln).get("epoch", 0) < row["epoch"]]
    text = "\n".join(kept + [json.dumps(row)]) + "\n"
    atomic_write(path, lambda f: f.write(text), mode="w")


def print_epoch(result: EpochResult, total: int, stream=sys.stderr) -> None:
    val = " ".join(f"{k}={v:.2f}" for k, v in result.val.items())
    best = "*" if result.is_best else " "
    print(f"epoch {result.epoch:>3}/{total} {best} loss={result.train_loss:.4g} lr={result.lr:.2g} "
          f"{val} [{result.seconds:.1f}s, {result.images_per_s:.0f} img/s] {result.status}",
          file=stream, flush=True)
