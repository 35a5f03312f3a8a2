"""The torch side of the data layer: a Dataset over FreiHAND image indices and a seeded sampler.

Determinism: every random choice is made in the main process. `AugmentSampler` draws, per epoch, the
order and one augmentation seed per item from `np.random.default_rng([seed, epoch])` and yields
(position, aug_seed) keys; `HandPoseDataset.__getitem__` builds its augmentation from that seed alone.
DataLoader workers therefore only execute, and an epoch's batches are the same with 0, 2 or 8 workers,
persistent or not. A plain int key (validation, evaluation) is never augmented.

Images stay uint8 (3, S, S): a quarter of the bytes of float32 through worker pipes and host-to-device
copies. Normalisation and the float conversion happen on the device, in the training loop.

    train = HandPoseDataset(reader, train_idx, 128, cfg.augment)
    sampler = AugmentSampler(len(train), seed=cfg.train.seed)
    loader = DataLoader(train, batch_size=32, sampler=sampler, num_workers=2)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in loader: ...
"""

from __future__ import annotations

from typing import Iterator

import cv2
import numpy as np
import torch

from ..config import AugmentConfig
from ..errors import DataError
from .augment import apply, sample_params
from .freihand import FreiHAND


class HandPoseDataset(torch.utils.data.Dataset):
    """Items {"image", "K", "xyz_mm", "index", "has_xyz"} for the image indices `indices` of a reader.

    image: uint8 (3, S, S), contiguous. K: float32 (3, 3), the camera of the output image. xyz_mm: float32
    (21, 3), camera frame in mm (zeros when the split has no ground truth, see has_xyz). index: the image
    index in the reader.
    """

    def __init__(self, reader: FreiHAND, indices: np.ndarray, image_size: int, augment: AugmentConfig | None = None):
        self.reader = reader
        self.indices = np.asarray(indices, dtype=np.int64)
        if self.indices.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {self.indices.shape}")
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= len(reader)):
            raise ValueError(f"indices must lie in [0, {len(reader)}) for {reader!r}")
        self.image_size = int(image_size)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        position, aug_seed = key if isinstance(key, tuple) else (key, None)
        index = int(self.indices[position])
        sample = self.reader[index]
        params = None
        if self.augment is not None and aug_seed is not None:
            params = sample_params(self.augment, np.random.default_rng(aug_seed), self.image_size)
        try:
            image, K, xyz = apply(sample.image, sample.K, sample.xyz, params, self.image_size)
        except ValueError as e:  # a non-square image
            raise DataError(f"{self.reader.image_path(index)}: {e}") from None
        has_xyz = xyz is not None
        xyz_mm = xyz * 1000.0 if has_xyz else np.zeros((21, 3))
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "K": torch.from_numpy(K.astype(np.float32)),
            "xyz_mm": torch.from_numpy(xyz_mm.astype(np.float32)),
            "index": index,
            "has_xyz": has_xyz,
        }


def make_loader(dataset: torch.utils.data.Dataset, batch_size: int, num_workers: int, *,
                sampler: torch.utils.data.Sampler | None = None, drop_last: bool = False,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader whose worker processes are safe to fork and do not oversubscribe the CPU.

    OpenCV's thread pool does not survive fork(): a worker forked from a process whose pool had
    run (the renderer, a preview) deadlocks on its first cv2.setNumThreads or parallel call. So
    the parent drops OpenCV to one thread BEFORE the workers fork; the workers are the
    parallelism, and each decoding and warping on every core would oversubscribe anyway.
    """
    if num_workers > 0:
        cv2.setNumThreads(1)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=drop_last,
        num_workers=num_workers, persistent_workers=num_workers > 0, pin_memory=pin_memory)


class AugmentSampler(torch.utils.data.Sampler):
    """Yields (position, aug_seed) pairs: a shuffled order per epoch and a per-item augmentation seed.

    Both come from np.random.default_rng([seed, epoch]) in the main process, so augmentation is
    deterministic per (seed, epoch) whatever the number of DataLoader workers (workers, persistent or not,
    only execute). Call set_epoch(epoch) before each epoch, like DistributedSampler; without it every
    epoch repeats epoch 0. With shuffle=False the order is 0..n-1 but the seeds still change per epoch.
    """

    def __init__(self, num_items: int, seed: int, shuffle: bool = True):
        if num_items < 0:
            raise ValueError(f"num_items={num_items}: must be non-negative")
        self.num_items = int(num_items)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_items) if self.shuffle else np.arange(self.num_items)
        seeds = rng.integers(0, 2**63 - 1, size=self.num_items, dtype=np.int64)
        return iter(zip(order.tolist(), seeds.tolist()))

    def __len__(self) -> int:
        return self.num_items
