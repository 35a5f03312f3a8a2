"""The Ray Tune trainable of a sweep: tune_hand's training loop, one report per epoch.

    trainable = tune.with_parameters(train_hand_pose, spec=spec.to_dict(), data_dir="/data/freihand")
    tune.with_resources(trainable, {"cpu": 4, "gpu": 1})

`config` is what Ray passes: the Optuna-sampled parameters plus the spec's fixed values
(`{"optim.lr": 3e-4, "model.channels": 96, ...}`). The trial's Config is built from the spec
by `tune_hand.sweep.space.trial_config`, so a trial and `tune-hand train` with the same config run
the same code.

Each epoch reports `EpochResult.metrics()` with a full-state checkpoint (`checkpoint.pt`:
model, optimiser, schedule, epoch, config, coordinate ranges), plus where it ran: `node_id`
(the Ray node) and `cuda_visible_devices` (the GPU(s) Ray gave the trial; "" on CPU). A
restarted trial resumes from `tune.get_checkpoint()`.

The dataset is read at the same path on every node. A node that cannot see it fails the
trial at once with the path and the node in the message (Ray retries it, up to the spec's
max_failures, possibly elsewhere), rather than a trial that never reports.

A diverged epoch (non-finite loss) reports the metric as the objective's sentinel (a large
finite value, 1e6 mm, `tune_hand.objective`) with `status="diverged"` and `diverged=True`,
then the trial ends: a finite sentinel ranks the trial last in ASHA's rung (NaN would be
skipped by its cutoff and never pruned; inf turns the rung's percentile into NaN). The
trainer ranks its epochs by the spec's objective, so a trial's best epoch is the one the
sweep's `best` exports.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import ray
from ray import tune

from tensorboardX import SummaryWriter

from tune_hand.checkpoint import FILENAME, load_checkpoint, save_checkpoint
from tune_hand.errors import DataError
from tune_hand.sweep.parse import parse_spec
from tune_hand.sweep.space import trial_config
from tune_hand.tb import log_images, should_log_images
from tune_hand.training import Trainer



def train_hand_pose(config: dict[str, Any], spec: dict[str, Any], data_dir: str,
                    continue_from: dict[str, dict[str, Any]] | None = None) -> None:
    """Run one trial: build its Config, resume if Ray has a checkpoint (or, for a trial a fork
    continues, from the parent trial's: `continue_from`, by config digest), report every epoch."""
    # Ray logs every reported checkpoint at INFO; the driver's live table says what matters.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    _check_data_visible(data_dir, node_id)
    parsed = parse_spec(spec, source=f"spec {spec.get('name', '')}".strip())
    cfg = trial_config(parsed, dict(config))
    trainer = Trainer(cfg, data_dir, objective=parsed.objective)
    # Which node and GPU(s) ran each epoch: Ray sets CUDA_VISIBLE_DEVICES for a trial with GPUs.
    where = {"node_id": node_id, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.restore(load_checkpoint(Path(d) / FILENAME))
    elif continue_from and cfg.digest() in continue_from:
        _continue(trainer, continue_from[cfg.digest()])

    trial_dir = tune.get_context().get_trial_dir()  # None when called outside a Tuner (tests)
    for result in trainer.epochs():
        if trial_dir and trainer.val_loader is not None and \
                should_log_images(result.epoch, cfg.optim.epochs, cfg.train.image_every):
            # Images only: Ray's own TensorBoard logger already writes every reported scalar. The
            # trial's directory is synced to the experiment's storage at the report below
            # (SyncConfig(sync_artifacts)), so the writer is closed first: tensorboardX's flush()
            # does not drain its queue, and ASHA may stop the trial right after this epoch.
            with SummaryWriter(trial_dir) as writer:
                log_images(writer, trainer, result.epoch)
        metrics = result.metrics()
        metrics["diverged"] = result.status == "diverged"
        metrics.update(where)
        if metrics["diverged"]:
            metrics[parsed.metric] = parsed.objective.sentinel
        # Ray's result.json must stay valid for every reader: no NaN/inf in reported values.
        metrics = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        with tempfile.TemporaryDirectory(prefix="tune_hand_ckpt_") as tmp:
            save_checkpoint(Path(tmp) / FILENAME, trainer.state_dict())
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


# Ray's own fields of a result row: not replayed (Ray sets them for the new report).
_RAY_FIELDS = {"trial_id", "timestamp", "time_this_iter_s", "time_total_s", "training_iteration", "date", "pid",
               "hostname", "node_ip", "time_since_restore", "iterations_since_restore", "checkpoint_dir_name",
               "done", "config", "experiment_tag", "should_checkpoint", "node_id", "cuda_visible_devices"}


def _continue(trainer: Trainer, entry: dict[str, Any]) -> None:
    """A fork's continued trial (`tune_hand.sweep.fork`): report the parent's epochs again
    (marked `replayed_from`, so schedulers and Optuna see the whole curve and the epoch count
    matches Ray's iteration count), the last with the parent's checkpoint, then go on training
    from that checkpoint under this trial's config (its LR milestones placed on the new budget)."""
    from tune_hand.sweep.storage import fetch_file

    with tempfile.TemporaryDirectory(prefix="tune_hand_ckpt_") as tmp:
        path = fetch_file(entry["checkpoint"], Path(tmp) / FILENAME)
        trainer.restore(load_checkpoint(path))
        rows = entry["rows"]
        for i, row in enumerate(rows):
            metrics = {k: v for k, v in row.items() if k not in _RAY_FIELDS}
            metrics["replayed_from"] = entry["origin"]
            last = i == len(rows) - 1
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp) if last else None)


def _check_data_visible(data_dir: str, node_id: str) -> None:
    """A clear error, naming the path and the node, when this node cannot see the dataset."""
    if not (Path(data_dir) / "training_K.json").is_file():
        node = f"node {socket.gethostname()}" + (f" (Ray node {node_id})" if node_id else "")
        raise DataError(f"{data_dir}: no FreiHAND dataset (training_K.json) on {node}; trials read the "
                        "dataset at this path on every node that runs them: mount or copy it there")
