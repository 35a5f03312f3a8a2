"""FIFO: every trial runs its whole budget (no early stopping); nothing to save across a resume."""

from __future__ import annotations

from ray.tune.schedulers import FIFOScheduler

from ._base import SnapshotOnProgress


class ResumableFIFO(SnapshotOnProgress, FIFOScheduler):
    """Ray's FIFOScheduler (no early stopping) with tune-hand's snapshots and moved-experiment paths."""

    def __init__(self, *args, min_snapshot_s: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.min_snapshot_s = min_snapshot_s
