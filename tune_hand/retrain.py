"""`tune-hand retrain`: the best trial's config, trained from scratch on training + validation,
then scored on the evaluation split with rotation averaging.

    summary = retrain("sweeps/q1", data_dir="data/", out="final/", epochs=145)
    summary = retrain("best/", data_dir="data/", out="final/")      # from `tune-hand best --export`

What lands in OUT:
    OUT/best/             the exported best trial (experiment sources only; see sweep.export_best)
    OUT/train/            the run, as `tune-hand train` writes it (config.yaml, checkpoint.pt, metrics.jsonl, tb/)
    OUT/config.yaml       the retrained config
    OUT/checkpoint.pt     its final weights (a copy of OUT/train/checkpoint.pt)
    OUT/submission.zip    FreiHAND's pred.json of the evaluation split, with rotation averaging
    OUT/metrics.json      scores with and without rotation averaging, both constant baselines,
                          epochs, seconds and the source trial's provenance; written last

Every file is replaced atomically. An interrupted retrain resumes from OUT/train when asked
for the same config (everything but data.dir, the dataset's location), and is refused otherwise.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .checkpoint import FILENAME, checkpoint_config, load_checkpoint
from .config import Config, apply_overrides, parse_override
from .errors import ConfigError, TuneHandError
from .io import atomic_write, write_json
from .model import describe_model
from .runs import run_files
from .sweep import SWEEP_FILE, export_best
from .sweep.storage import is_remote

EXPORT_FILES = ("config.yaml", "provenance.json")  # the exported checkpoint.pt is not needed: we train from scratch
SCORE_KEYS = ("pa_mpjpe_mm", "rr_mpjpe_mm", "freihand_aligned_mm", "auc_0_50mm", "mpjpe_mm")
PROVENANCE_KEYS = ("trial_id", "epoch", "checkpoint", "config_digest", "spec_hash")  # what identifies an export


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def retrain(source: str | Path, data_dir: str | Path | None, out: str | Path, epochs: int | None = None,
            tta: int | None = None, overrides: list[str] | None = None,
            progress: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """Retrain the best trial of `source` on all training images and score it on the evaluation split.

    source: an experiment directory (holds tune_hand_sweep.json; its best trial is exported to
        OUT/best first) or a `tune-hand best --export` directory (config.yaml + provenance.json).
    data_dir: the dataset (FreiHAND layout); None uses the trial config's data.dir.
    epochs: the training budget; the LR milestones are rescaled to it (unless `overrides` set them).
        None keeps the trial's optim.epochs.
    tta: rotation-averaging angles for the scores and the submission (default: eval.tta_rotations);
        the plain (tta=1) scores are computed too, for the gain.
    overrides: `section.key=value` strings applied to the trial's config before `epochs`.
    progress: called with one human-readable line at a time (default: print to stderr).

    Returns {"out", "config", "checkpoint", "submission", "metrics", "train_dir", "epochs", "tta",
    "trial_id", "scores_available", "pa_mpjpe_mm", "pa_mpjpe_mm_no_tta", baselines' pa_mpjpe_mm}.
    Raises TuneHandError (one line) for a bad source, config, dataset, a refused resume or a
    diverged run; nothing is evaluated then.
    """
    from .evaluation import evaluate_checkpoint
    from .runs import print_epoch, run
    from .training import Trainer

    start = time.perf_counter()
    out = Path(out)
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs {epochs}: must be at least 1")
    if tta is not None and tta < 1:
        raise ConfigError(f"--tta {tta}: must be at least 1")

    kind, export_dir = _export_dir(source, out)
    provenance = _read_provenance(export_dir / "provenance.json")
    cfg = retrain_config(Config.from_yaml(export_dir / "config.yaml"), epochs, overrides)
    data_dir = data_dir if data_dir is not None else cfg.data.dir
    if data_dir is None:
        raise ConfigError("--data: no dataset given and the trial's config has no data.dir")
    data_dir = Path(data_dir).expanduser().resolve()
    cfg.data.dir = str(data_dir)
    tta = cfg.eval.tta_rotations if tta is None else tta
    _check_evaluation_split(data_dir)  # before hours of training, not after

    train_dir = out / "train"
    state = _resumable_state(train_dir, cfg)
    progress(f"retrain: trial {provenance.get('trial_id')} (epoch {provenance.get('epoch')}, "
             f"{provenance.get('metric', 'pa_mpjpe_mm')}={_fmt(provenance.get('value'))}) from {export_dir}")
    trainer = Trainer(cfg, data_dir, train_on_val=True)
    if state is not None:
        trainer.restore(state)
    train_dir.mkdir(parents=True, exist_ok=True)
    trainer.cfg.to_yaml(train_dir / "config.yaml")
    total = trainer.cfg.optim.epochs
    progress(f"training {describe_model(cfg.model)} on {len(trainer.train_idx)} "
             f"images (training + validation) on {trainer.device}, epochs {trainer.epoch + 1}..{total} "
             f"(milestones {list(cfg.optim.milestones)}) -> {train_dir}")

    def on_epoch(result) -> None:
        buf = io.StringIO()
        print_epoch(result, total, stream=buf)
        progress(buf.getvalue().rstrip("\n"))

    run(trainer, train_dir, on_epoch=on_epoch)
    if trainer.status != "ok":
        raise TuneHandError(f"{train_dir}: the retrain diverged at epoch {trainer.epoch} (non-finite loss), so nothing "
                            f"was evaluated; retry into another --out with a lower optim.lr (--set optim.lr=...)")

    final = train_dir / FILENAME
    progress(f"evaluating {final} on the evaluation split (tta {tta}" + (" and 1)" if tta > 1 else ")"))
    t_eval = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    submission = out / "submission.zip"
    device, train_images = trainer.cfg.train.device, len(trainer.train_idx)
    del trainer  # free the training state before evaluation builds its own model
    with_tta = evaluate_checkpoint(final, data_dir, split="evaluation", tta=tta, device=device,
                                   submission=submission)
    plain = with_tta if tta == 1 else evaluate_checkpoint(final, data_dir, split="evaluation", tta=1, device=device)
    eval_seconds = time.perf_counter() - t_eval

    final_state = load_checkpoint(final)
    metrics = _metrics(kind, source, export_dir, provenance, cfg, data_dir, final_state, train_images, with_tta,
                       plain, eval_seconds, time.perf_counter() - start)
    # The user-facing files, each atomic; metrics.json last, so its presence means the others are whole.
    checkpoint_config(final_state, final).to_yaml(out / "config.yaml")
    atomic_write(out / FILENAME, lambda f: _copy_into(final, f))
    write_json(out / "metrics.json", metrics)
    return _summary(out, train_dir, metrics)


# -- the config ----------------------------------------------------------------------------
def retrain_config(trial_cfg: Config, epochs: int | None = None, overrides: list[str] | None = None) -> Config:
    """The trial's config with `overrides` applied, then `optim.epochs=epochs` with the milestones
    rescaled to it (milestones set explicitly in `overrides` are kept as given)."""
    cfg = apply_overrides(trial_cfg, overrides)
    if epochs is not None and epochs != cfg.optim.epochs:
        explicit = any(parse_override(o)[0] == "optim.milestones" for o in overrides or [])
        if not explicit:
            cfg.optim.milestones = rescale_milestones(cfg.optim.milestones, cfg.optim.epochs, epochs)
        cfg.optim.epochs = epochs
    return cfg.validate()


def rescale_milestones(milestones: list[int], old_epochs: int, new_epochs: int) -> list[int]:
    """Milestones of an `old_epochs` schedule at the same fractions of `new_epochs`: strictly
    increasing, within 1..new_epochs (collisions move one epoch later; any past the end are dropped)."""
    out: list[int] = []
    for m in milestones:
        scaled = min(new_epochs, max(1, math.floor(m * new_epochs / old_epochs + 0.5)))
        scaled = max(scaled, out[-1] + 1 if out else 1)
        if scaled <= new_epochs:
            out.append(scaled)
    return out


# -- the source ----------------------------------------------------------------------------
def _export_dir(source: str | Path, out: Path) -> tuple[str, Path]:
    """("experiment" | "export", the export directory to retrain from)."""
    if is_remote(source):  # an experiment in a bucket: its best trial is exported (one checkpoint fetched)
        return "experiment", _export_best(str(source), out / "best")
    src = Path(source).expanduser()
    if not src.is_dir():
        raise TuneHandError(f"{src}: no such directory; expected an experiment directory (with {SWEEP_FILE}) "
                            "or one written by `tune-hand best --export`")
    if (src / SWEEP_FILE).is_file():
        return "experiment", _export_best(src, out / "best")
    missing = [name for name in EXPORT_FILES if not (src / name).is_file()]
    if missing:
        raise TuneHandError(f"{src}: neither an experiment directory (no {SWEEP_FILE}) nor a "
                            f"`tune-hand best --export` directory (no {', '.join(missing)})")
    return "export", src


def _export_best(exp: str | Path, best_dir: Path) -> Path:
    """Export the experiment's best trial to `best_dir`, or reuse the export an interrupted
    retrain left there when it is still the experiment's best."""
    if not best_dir.exists():
        export_best(exp, best_dir)
        return best_dir
    missing = [name for name in EXPORT_FILES if not (best_dir / name).is_file()]
    if missing:
        raise TuneHandError(f"{best_dir}: exists but is not an export (no {', '.join(missing)}); "
                            "remove it or choose another --out")
    old = _read_provenance(best_dir / "provenance.json")
    best_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".best-check.", dir=best_dir.parent) as tmp:
        new = export_best(exp, Path(tmp) / "best")
    changed = [k for k in PROVENANCE_KEYS if old.get(k) != new.get(k)]
    if changed:
        raise TuneHandError(f"{best_dir}: holds trial {old.get('trial_id')} epoch {old.get('epoch')}, but the best of "
                            f"{exp} is now trial {new.get('trial_id')} epoch {new.get('epoch')} "
                            f"({', '.join(changed)} differ); retrain into another --out")
    return best_dir


def _read_provenance(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TuneHandError(f"{path}: unreadable provenance ({' '.join(str(e).split())[:160]})") from None
    if not isinstance(data, dict):
        raise TuneHandError(f"{path}: expected a JSON object (the provenance `tune-hand best --export` writes)")
    return data


def _check_evaluation_split(data_dir: Path) -> None:
    from .data.freihand import FreiHAND

    FreiHAND(data_dir, "evaluation")  # a DataError naming what is missing


# -- resuming ------------------------------------------------------------------------------
def _resumable_state(train_dir: Path, cfg: Config) -> dict[str, Any] | None:
    """The checkpoint of an interrupted retrain of the same config, None for a fresh start;
    a TuneHandError when `train_dir` holds a run of another config."""
    latest = train_dir / FILENAME
    if train_dir.is_dir():
        run_files(train_dir)  # finish or undo an epoch's commit that a kill cut short
    if not latest.exists():
        return None
    state = load_checkpoint(latest)
    saved = checkpoint_config(state, latest)
    if _comparable(saved).digest() != _comparable(cfg).digest():
        diff = _config_diff(saved, cfg)
        raise TuneHandError(f"{train_dir}: holds a retrain of another config ({diff}); rerun with the same "
                            "--epochs/--set to resume it, or choose another --out")
    return state


def _comparable(cfg: Config) -> Config:
    """The config without where the dataset lives: a moved dataset may resume its run."""
    c = cfg.copy()
    c.data.dir = None
    return c


def _config_diff(old: Config, new: Config, limit: int = 4) -> str:
    a, b = _comparable(old).to_dict(), _comparable(new).to_dict()
    changes = [f"{s}.{k}: {a[s][k]!r} -> {b[s][k]!r}" for s in a for k in a[s] if a[s][k] != b[s][k]]
    if len(changes) > limit:
        changes = changes[:limit] + [f"{len(changes) - limit} more"]
    return "; ".join(changes)


# -- results -------------------------------------------------------------------------------
def _metrics(kind: str, source: str | Path, export_dir: Path, provenance: dict[str, Any], cfg: Config,
             data_dir: Path, state: dict[str, Any], train_images: int, with_tta: dict[str, Any], plain: dict[str, Any],
             eval_seconds: float, seconds: float) -> dict[str, Any]:
    history = state.get("history", [])
    available = "pa_mpjpe_mm" in with_tta
    scores = {k: with_tta[k] for k in SCORE_KEYS} if available else None
    scores_no_tta = {k: plain[k] for k in SCORE_KEYS} if available else None
    metrics: dict[str, Any] = {
        "source": {
            "kind": kind, "path": str(source), "export": str(export_dir),
            **{k: provenance.get(k) for k in ("experiment", "trial_id", "trial_dir", "epoch", "metric", "mode",
                                              "value", "spec_name", "spec_hash", "config_digest")},
        },
        "config_digest": cfg.digest(),
        "data": str(data_dir),
        "split": "evaluation",
        "n": with_tta["n"],
        "epochs": int(state["epoch"]),
        "train_images": train_images,  # training + validation: the whole training split
        "train_seconds": round(sum(h.get("seconds", 0.0) for h in history), 3),
        "eval_seconds": round(eval_seconds, 3),
        "seconds": round(seconds, 3),
        "tta": with_tta["tta"],
        "scores_available": available,
        "scores": scores,
        "scores_no_tta": scores_no_tta,
        "tta_gain_mm": scores_no_tta["pa_mpjpe_mm"] - scores["pa_mpjpe_mm"] if available else None,
        "baselines": with_tta.get("baselines"),
        "submission": "submission.zip",
        "checkpoint": FILENAME,
        "config": "config.yaml",
    }
    for key in ("note", "note_scores"):
        if key in with_tta:
            metrics[key] = with_tta[key]
    return metrics


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _copy_into(src: Path, f) -> None:
    with open(src, "rb") as s:
        shutil.copyfileobj(s, f)


def _summary(out: Path, train_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    scores, plain, baselines = metrics["scores"] or {}, metrics["scores_no_tta"] or {}, metrics["baselines"] or {}
    return {
        "out": str(out), "config": str(out / "config.yaml"), "checkpoint": str(out / FILENAME),
        "submission": str(out / "submission.zip"), "metrics": str(out / "metrics.json"), "train_dir": str(train_dir),
        "epochs": metrics["epochs"], "tta": metrics["tta"], "trial_id": metrics["source"]["trial_id"],
        "scores_available": metrics["scores_available"],
        "pa_mpjpe_mm": scores.get("pa_mpjpe_mm"), "pa_mpjpe_mm_no_tta": plain.get("pa_mpjpe_mm"),
        **{f"baseline_{name}_pa_mpjpe_mm": s.get("pa_mpjpe_mm") for name, s in baselines.items()},
    }
