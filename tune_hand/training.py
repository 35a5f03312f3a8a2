"""The training loop: one implementation shared by `tune-hand train` and the Ray trainable.

Reading order: data setup -> model/optimiser -> one epoch -> validation -> the run loop.

    trainer = Trainer(cfg, data_dir)            # builds data, model, optimiser, schedule
    trainer.restore(load_checkpoint(path))      # optional: continue a run
    for result in trainer.epochs():             # one EpochResult per epoch, after validation
        save_checkpoint(out / "checkpoint.pt", trainer.state_dict())

The recipe is the paper's: Adam, MultiStepLR with milestones in epochs, MSE on the 3D
points in millimetres. A non-finite loss ends the run at once with status "diverged".
"""

from __future__ import annotations

import collections
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .config import Config
from .data.cache import open_cache
from .data.dataset import AugmentSampler, DeviceWarpLoader, HandPoseDataset, make_loader
from .data.freihand import FreiHAND, coordinate_ranges, mean_root_mm, split_by_sample
from .errors import CheckpointError, ConfigError
from .losses import pa_loss
from .metrics import pa_mpjpe_mm
from .objective import DEFAULT_METRIC, Objective
from .model import build_model

PRIMARY_METRIC = DEFAULT_METRIC  # what validation always reports, and the default objective


@dataclass
class EpochResult:
    epoch: int  # epochs completed, 1-based
    status: str  # "ok" | "diverged"
    train_loss: float
    lr: float
    seconds: float
    images_per_s: float
    val: dict[str, float] = field(default_factory=dict)
    best_metric: float = math.inf
    best_epoch: int = 0
    is_best: bool = False

    def metrics(self) -> dict[str, Any]:
        """Flat metrics for reporting (Ray Tune, TensorBoard, metrics.jsonl)."""
        out = {k: v for k, v in asdict(self).items() if k != "val"}
        out.update(self.val)
        return out


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r}: CUDA is not available on this machine; use auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               x: torch.Tensor, y: torch.Tensor, amp_dtype: torch.dtype | None,
               pa_loss_weight: float = 0.0) -> torch.Tensor:
    """One optimisation step (MSE on the 3D points, mm^2, plus pa_loss_weight x the Procrustes-aligned
    squared error when it is > 0); returns the loss without syncing."""
    with torch.autocast(device_type=x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        pred = model(x)
    loss = F.mse_loss(pred.float(), y)
    if pa_loss_weight > 0:
        loss = loss + pa_loss_weight * pa_loss(pred.float(), y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


class Trainer:
    """Owns the data, model, optimiser and schedule of one training run."""

    def __init__(self, cfg: Config, data_dir: str | Path | None = None, *, train_on_val: bool = False,
                 objective: Objective | None = None):
        # What ranks the epochs (best_metric, best_epoch, best.pt): the sweep's objective for a trial,
        # the paper's PA-MPJPE otherwise.
        self.objective = objective or Objective.single(DEFAULT_METRIC, "min")
        self.cfg = cfg.copy().validate()
        data_dir = data_dir if data_dir is not None else cfg.data.dir
        if data_dir is None:
            raise ConfigError("data.dir: no dataset given; pass --data DIR or set data.dir")
        self.cfg.data.dir = str(data_dir)
        self.device = select_device(cfg.train.device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        seed_everything(cfg.train.seed)

        self.reader = FreiHAND(data_dir, "training")
        self.train_idx, self.val_idx = split_by_sample(
            len(self.reader), self.reader.num_unique, cfg.data.val_fraction, cfg.data.seed)
        if train_on_val:  # a final retrain: fit on everything, validate on nothing
            self.train_idx = np.sort(np.concatenate([self.train_idx, self.val_idx]))
            self.val_idx = self.val_idx[:0]
        if len(self.train_idx) == 0:
            raise ConfigError(f"data.val_fraction={cfg.data.val_fraction}: leaves no training images in {data_dir}")
        train_unique = np.unique(self.train_idx % self.reader.num_unique)
        self.train_xyz_m = self.reader.xyz[train_unique]

        # The heatmap range belongs to the data: measured on the training split only.
        ranges = coordinate_ranges(self.train_xyz_m, cfg.model.target, cfg.data.range_margin)
        self.model = build_model(
            self.cfg,
            ranges_mm=torch.as_tensor(ranges, dtype=torch.float32),
            mean_root_mm=torch.as_tensor(mean_root_mm(self.train_xyz_m, cfg.model.target), dtype=torch.float32),
        ).to(self.device)
        self.channels_last = cfg.train.channels_last
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # The compiled module shares the model's parameters; checkpoints and evaluation use the plain one.
        self.step_model = torch.compile(self.model) if cfg.train.compile else self.model
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=list(cfg.optim.milestones), gamma=cfg.optim.gamma)
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        self.epoch = 0
        self.best_metric = self.objective.worst()
        self.best_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.status = "ok"
        self._build_loaders()

    # -- setup -------------------------------------------------------------------------
    def _amp_dtype(self) -> torch.dtype | None:
        if self.device.type != "cuda" or not self.cfg.train.amp:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def _build_loaders(self) -> None:
        cfg = self.cfg
        size = cfg.data.image_size
        workers = cfg.data.num_workers
        pin = self.device.type == "cuda"
        cache = open_cache(self.reader, cfg.data.cache)  # None when data.cache is "" or the split does not fit
        train_set = HandPoseDataset(self.reader, self.train_idx, size, augment=cfg.augment, cache=cache,
                                    device_warp=cfg.data.device_warp)
        self.sampler = AugmentSampler(len(train_set), seed=cfg.train.seed)
        self.train_loader = make_loader(
            train_set, cfg.optim.batch_size, workers, sampler=self.sampler, pin_memory=pin,
            drop_last=len(train_set) > cfg.optim.batch_size)  # a batch of 1 breaks BatchNorm
        if cfg.data.device_warp:  # batches come out warped, uint8 (B, 3, S, S) on self.device
            self.train_loader = DeviceWarpLoader(self.train_loader, self.device, size)
        val_set = HandPoseDataset(self.reader, self.val_idx, size, augment=None, cache=cache)
        self.val_loader = make_loader(val_set, cfg.eval.batch_size, workers, pin_memory=pin) if len(val_set) else None

    def to_input(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 (B,3,S,S) from the loader -> float [0,1] on the device (normalised inside the model)."""
        x = images_u8.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.float().div_(255.0)

    def targets(self, xyz_mm: torch.Tensor) -> torch.Tensor:
        y = xyz_mm.to(self.device, non_blocking=True)
        if self.cfg.model.target == "root_relative":
            y = y - y[:, :1]
        elif self.cfg.model.target == "centroid_relative":
            y = y - y.mean(dim=1, keepdim=True)
        return y

    # -- one epoch -----------------------------------------------------------------------
    def train_epoch(self) -> tuple[float, int, bool]:
        """(mean loss, images seen, finite). Stops at the first non-finite loss."""
        self.model.train()
        self.sampler.set_epoch(self.epoch)
        # Losses accumulate on the device; a sync (.item()) only where checking is free
        # (CPU) or every `check_every` steps on an accelerator.
        check_every = 1 if self.device.type == "cpu" else 25
        loss_sum = torch.zeros((), device=self.device)
        seen = 0
        for step, batch in enumerate(self.train_loader):
            x = self.to_input(batch["image"])
            y = self.targets(batch["xyz_mm"])
            loss = train_step(self.step_model, self.optimizer, self.scaler, x, y, self.amp_dtype,
                              self.cfg.optim.pa_loss_weight)
            loss_sum += loss.detach() * len(x)
            seen += len(x)
            if (step + 1) % check_every == 0 and not torch.isfinite(loss_sum).item():
                return math.nan, seen, False
        mean = (loss_sum / max(seen, 1)).item()
        return mean, seen, math.isfinite(mean)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Plain (no rotation averaging) validation metrics, in mm."""
        if self.val_loader is None:
            return {}
        preds, gts = predict_loader(self, self.val_loader)
        return validation_metrics(preds, gts, self.cfg.model.target)

    # -- the run -------------------------------------------------------------------------
    def epochs(self) -> Iterator[EpochResult]:
        """Train until optim.epochs, yielding after each epoch; stops early on divergence."""
        while self.epoch < self.cfg.optim.epochs and self.status == "ok":
            start = time.perf_counter()
            loss, seen, finite = self.train_epoch()
            self.epoch += 1
            lr = self.optimizer.param_groups[0]["lr"]
            if not finite:
                self.status = "diverged"
                val: dict[str, float] = {PRIMARY_METRIC: math.nan}
            else:
                self.scheduler.step()
                val = self.validate()
                if val and not math.isfinite(val[PRIMARY_METRIC]):
                    self.status = "diverged"  # finite loss, but eval-mode predictions blew up
            seconds = time.perf_counter() - start
            metric = {**val, "train_loss": loss}.get(self.objective.metric, math.nan)
            is_best = finite and self.objective.better(metric, self.best_metric)
            if is_best:
                self.best_metric, self.best_epoch = metric, self.epoch
            result = EpochResult(
                epoch=self.epoch, status=self.status, train_loss=loss, lr=lr, seconds=seconds,
                images_per_s=seen / seconds if seconds > 0 else 0.0, val=val,
                best_metric=self.best_metric, best_epoch=self.best_epoch, is_best=is_best)
            self.history.append(result.metrics())
            yield result

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        model = self.model
        return {
            "config": self.cfg.to_dict(),
            "model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "status": self.status,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "torch_rng": torch.get_rng_state(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue the run a checkpoint saved: its weights, optimiser moments, epoch count and
        best so far; the hyperparameters (learning rate, weight decay, milestones, gamma) come
        from THIS trainer's config, not the checkpoint's.

        So a scheduler that changes a trial's hyperparameters between epochs (PBT) resumes the
        trial under the new values. The learning rate is recomputed the way MultiStepLR would
        have stepped it from epoch 0 under this config (the same float operations, so a plain
        resume continues bit-identically).
        """
        saved = Config.from_dict(state["config"], source="checkpoint")
        if _architecture(saved) != _architecture(self.cfg):
            raise CheckpointError("checkpoint: its model config differs from this run's "
                                  f"({_architecture(saved)} vs {_architecture(self.cfg)}); resume with the same config")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])  # its counters; the values are replaced below
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self._apply_hyperparameters()
        self.status = state.get("status", "ok")
        self.best_metric = float(state.get("best_metric", self.objective.worst()))
        self.best_epoch = int(state.get("best_epoch", 0))
        self.history = list(state.get("history", []))
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])


    def _apply_hyperparameters(self) -> None:
        """Set the optimiser's and the schedule's hyperparameters from self.cfg at self.epoch."""
        optim = self.cfg.optim
        lr = optim.lr
        # MultiStepLR's own update, replayed: at each milestone passed, lr * gamma ** (times listed).
        counts = collections.Counter(optim.milestones)
        for milestone in sorted(counts):
            if milestone <= self.epoch:
                lr = lr * optim.gamma ** counts[milestone]
        for group in self.optimizer.param_groups:
            group.update(lr=lr, initial_lr=optim.lr, weight_decay=optim.weight_decay)
        self.scheduler.milestones = counts
        self.scheduler.gamma = optim.gamma
        self.scheduler.base_lrs = [optim.lr for _ in self.optimizer.param_groups]
        self.scheduler.last_epoch = self.epoch
        self.scheduler._last_lr = [lr for _ in self.optimizer.param_groups]


def _architecture(cfg: Config) -> dict[str, Any]:
    m = asdict(cfg.model)
    for k in ("pretrained", "weights"):  # how the encoder was initialised, not its shape
        m.pop(k)
    return {"model": m, "image_size": cfg.data.image_size}


@torch.no_grad()
def predict_loader(trainer_or_model, loader, device: torch.device | None = None,
                   tta: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, ground truth), camera-frame mm (B,21,3), for every item of `loader`."""
    from .rotation_tta import predict_rotation_averaged

    if isinstance(trainer_or_model, Trainer):
        model, device = trainer_or_model.model, trainer_or_model.device
        to_input = trainer_or_model.to_input
    else:
        model = trainer_or_model
        to_input = lambda u8: u8.to(device).float().div_(255.0)  # noqa: E731
    was_training = model.training
    model.eval()
    preds, gts = [], []
    for batch in loader:
        x = to_input(batch["image"])
        if tta > 1:
            pred = predict_rotation_averaged(model, x, batch["K"].to(device), tta)
        else:
            pred = model(x)
        preds.append(model.to_camera(pred.float()).cpu().numpy())
        gts.append(batch["xyz_mm"].numpy())
    model.train(was_training)
    return np.concatenate(preds).astype(np.float64), np.concatenate(gts).astype(np.float64)


def validation_metrics(pred_mm: np.ndarray, gt_mm: np.ndarray, target: str) -> dict[str, float]:
    """The search's metric (`pa_mpjpe_mm`) plus root-relative and unaligned MPJPE; NaN if any prediction is."""
    if not np.isfinite(pred_mm).all():
        return {PRIMARY_METRIC: math.nan, "rr_mpjpe_mm": math.nan, "mpjpe_mm": math.nan}
    rr = np.linalg.norm((pred_mm - pred_mm[:, :1]) - (gt_mm - gt_mm[:, :1]), axis=-1).mean()
    out = {
        PRIMARY_METRIC: float(pa_mpjpe_mm(pred_mm, gt_mm)),
        "rr_mpjpe_mm": float(rr),
        "mpjpe_mm": float(np.linalg.norm(pred_mm - gt_mm, axis=-1).mean()),
    }
    return out
