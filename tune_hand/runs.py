"""A training run on disk, as `tune-hand train` writes it.

    OUT/config.yaml        the full config of the run
    OUT/checkpoint.pt      the latest full-state checkpoint (resume from here)
    OUT/best.pt            the checkpoint of the best validation epoch (the state's best_epoch)
    OUT/metrics.jsonl      one line of metrics per epoch, epochs 1..E of checkpoint.pt
    OUT/commit.json        which epoch the three files above hold, with their sha256 digests
    OUT/tb/                TensorBoard scalars, prediction and heatmap images (tensorboardX; may lag)

checkpoint.pt, best.pt and metrics.jsonl change together, once per epoch, as one commit
(`tune_hand.io.CommittedFiles`: each is staged as `.NAME.next`, then commit.json is renamed into place,
then the staged files are renamed). A run killed at any moment is repaired when it starts again
(`start_run`, `run`): a commit cut short after commit.json is finished, one cut short before it is
dropped, and temporaries are removed; so metrics.jsonl has rows 1..E where E is checkpoint.pt's epoch,
best.pt is the checkpoint of its best_epoch, and the run resumes from its last complete epoch. A run
killed in its first epoch (config.yaml, no checkpoint yet) resumes from the start.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Callable

from .checkpoint import FILENAME, checkpoint_bytes, checkpoint_config, load_checkpoint
from .config import Config, apply_overrides
from .errors import TuneHandError
from .io import CommittedFiles, remove_temporaries
from .tb import log_images, should_log_images
from .training import EpochResult, Trainer

BEST = "best.pt"
METRICS = "metrics.jsonl"
CONFIG = "config.yaml"


def run_files(out: str | Path) -> CommittedFiles:
    """The run's committed files in `out`, after repairing a commit a kill cut short (see module docstring)."""
    remove_temporaries(out, [CONFIG])
    return CommittedFiles(out, [FILENAME, BEST, METRICS])


def start_run(cfg: Config, data_dir: str | Path | None, out: str | Path, resume: bool = False,
              overrides: list[str] | None = None) -> Trainer:
    """A Trainer for a new run in `out`, or for the run saved there (`resume=True`)."""
    out = Path(out)
    latest = out / FILENAME
    if out.is_dir():
        run_files(out)
    if resume and not latest.is_file() and (out / CONFIG).is_file():  # killed before its first epoch ended
        cfg = apply_overrides(Config.from_yaml(out / CONFIG), overrides)
        return _new_run(cfg, data_dir or cfg.data.dir, out)
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
    return _new_run(cfg, data_dir, out)


def _new_run(cfg: Config, data_dir: str | Path | None, out: Path) -> Trainer:
    trainer = Trainer(cfg, data_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer.cfg.to_yaml(out / CONFIG)
    return trainer


def run(trainer: Trainer, out: str | Path, on_epoch: Callable[[EpochResult], None] | None = None) -> EpochResult | None:
    """Train to the end of the budget, checkpointing every epoch; returns the last result."""
    from tensorboardX import SummaryWriter

    out = Path(out)
    last = None
    files = run_files(out)
    writer = SummaryWriter(str(out / "tb"))
    try:
        for result in trainer.epochs():
            last = result
            blob = checkpoint_bytes(trainer.state_dict())
            changed = {FILENAME: blob, **({BEST: blob} if result.is_best else {}), METRICS: _jsonl(trainer.history)}
            files.commit(changed, epoch=result.epoch, best_epoch=trainer.best_epoch)
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


def _jsonl(rows: list[dict]) -> bytes:
    """metrics.jsonl: one JSON line per epoch, from the state's own history (so it always matches it)."""
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def print_epoch(result: EpochResult, total: int, stream=sys.stderr) -> None:
    val = " ".join(f"{k}={v:.2f}" for k, v in result.val.items())
    best = "*" if result.is_best else " "
    print(f"epoch {result.epoch:>3}/{total} {best} loss={result.train_loss:.4g} lr={result.lr:.2g} "
          f"{val} [{result.seconds:.1f}s, {result.images_per_s:.0f} img/s] {result.status}",
          file=stream, flush=True)
