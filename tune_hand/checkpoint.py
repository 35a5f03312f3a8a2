"""Full-state checkpoints: everything a resume or an evaluation needs, in one file.

A checkpoint holds its own config, so evaluation never needs the sweep spec again:
    {"format", "config", "model", "optimizer", "scheduler", "epoch", "best_metric",
     "best_epoch", "history", "torch_rng"}
The model's state_dict carries the coordinate ranges, the mean root and the input
normalisation as buffers. Files are written atomically and read with weights_only=True.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from .config import Config
from .errors import CheckpointError, TuneHandError
from .io import atomic_write_bytes

FORMAT = "tune-hand-checkpoint/1"
FILENAME = "checkpoint.pt"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically write `state` (see module docstring) to `path`."""
    return atomic_write_bytes(path, checkpoint_bytes(state))


def checkpoint_bytes(state: dict[str, Any]) -> bytes:
    """The bytes of a checkpoint file holding `state`, for writers that commit several files at once."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    return buf.getvalue()


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a directory holding one (`checkpoint.pt`, as Ray and `train` write)."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a tune-hand checkpoint (never unpickles code: weights_only=True)."""
    path = resolve(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or foreign files
        msg = " ".join(str(e).split())[:200]
        raise CheckpointError(f"{path}: not a readable tune-hand checkpoint ({type(e).__name__}: {msg})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a tune-hand checkpoint (format {found!r}, expected {FORMAT!r})")
    for key in ("config", "model", "epoch"):
        if key not in state:
            raise CheckpointError(f"{path}: checkpoint lacks '{key}'")
    return state


def checkpoint_config(state: dict[str, Any], path: str | os.PathLike = "checkpoint") -> Config:
    try:
        return Config.from_dict(state["config"], source=f"{path} (config)")
    except TuneHandError as e:
        raise CheckpointError(str(e)) from None


def model_from_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """(model in eval mode, config, raw state) from a checkpoint; no ImageNet weights needed."""
    from .model import build_model

    state = load_checkpoint(path)
    cfg = checkpoint_config(state, path)
    model = build_model(cfg, pretrained=False)  # the checkpoint's weights replace ImageNet's
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{resolve(path)}: weights do not match its config ({first})") from None
    return model.to(device).eval(), cfg, state
