"""The torch side of the data layer: a Dataset over FreiHAND image indices and a seeded sampler.

Determinism: every random choice is made in the main process. `AugmentSampler` draws, per epoch, the
order and one augmentation seed per item from `np.random.default_rng([seed, epoch])` and yields
(position, aug_seed) keys; `HandPoseDataset.__getitem__` builds its augmentation from that seed alone
(through a generator whose state is a hash of the seed, see `_item_rng`).
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

Two options move work off the per-item CPU path (benchmarks/bench_input.py measures each):
- `cache=` a `DecodedCache` (tune_hand/data/cache.py): images come from a mapped uint8 file, not JPEGs.
- `device_warp=True`: items carry the source image (H, W, 3) and their augmentation (the pixel affine,
  the anti-aliasing sigma, the colour matrix) instead of a warped image; `DeviceWarpLoader` wraps the
  DataLoader, moves each batch to the device and warps it there in one batched `grid_sample`, giving
  the same batch as the CPU path (uint8 (B, 3, S, S), now on the device; pixels within a few grey levels
  of OpenCV's, labels identical).
"""

from __future__ import annotations

import hashlib
import threading
from typing import Iterator

import cv2
import numpy as np
import torch

from ..config import AugmentConfig
from ..errors import DataError, TuneHandError
from .augment import LUMA, AugmentParams, antialias_sigma, apply, geometry, jitter_matrix, sample_params
from .cache import DecodedCache
from .freihand import FreiHAND

_RNG = threading.local()  # one reusable generator per thread, see _item_rng
_NO_JITTER = torch.cat([torch.eye(3), torch.zeros(3, 1)], 1)  # a device-warp item's colour matrix without jitter


class HandPoseDataset(torch.utils.data.Dataset):
    """Items {"image", "K", "xyz_mm", "index", "has_xyz"} for the image indices `indices` of a reader.

    image: uint8 (3, S, S), contiguous. K: float32 (3, 3), the camera of the output image. xyz_mm: float32
    (21, 3), camera frame in mm (zeros when the split has no ground truth, see has_xyz). index: the image
    index in the reader.

    cache: a DecodedCache of the reader's split; images are read from it instead of decoded. device_warp:
    instead of "image", items carry "source" (the (H, W, 3) uint8 RGB image as read), "warp" (float64
    (2, 3), input -> output pixels), "blur" (the anti-aliasing sigma, 0.0 for none) and "jitter" (float32
    (3, 4) colour matrix and mean-grey pull; identity for none), for `warp_batch`.
    """

    def __init__(self, reader: FreiHAND, indices: np.ndarray, image_size: int, augment: AugmentConfig | None = None,
                 *, cache: DecodedCache | None = None, device_warp: bool = False):
        self.reader = reader
        self.indices = np.asarray(indices, dtype=np.int64)
        if self.indices.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {self.indices.shape}")
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= len(reader)):
            raise ValueError(f"indices must lie in [0, {len(reader)}) for {reader!r}")
        if cache is not None and len(cache) != len(reader):
            raise ValueError(f"cache {cache!r} holds {len(cache)} images, but {reader!r} has {len(reader)}")
        self.image_size = int(image_size)
        self.augment = augment
        self.cache = cache
        self.device_warp = device_warp

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        position, aug_seed = key if isinstance(key, tuple) else (key, None)
        index = int(self.indices[position])
        reader = self.reader
        u = index % reader.num_unique
        image = self.cache[index] if self.cache is not None else reader.read_image(index)
        K = reader.K[u]
        xyz = None if reader.xyz is None else reader.xyz[u]
        params = None
        if self.augment is not None and aug_seed is not None:
            params = sample_params(self.augment, _item_rng(aug_seed), self.image_size)
        h, w = image.shape[:2]
        if h != w:
            raise DataError(f"{reader.image_path(index)}: augment.apply expects a square image, got {w}x{h}")
        if self.device_warp:
            item = _device_item(image, self.cache is not None, params, K, xyz, self.image_size)
        else:
            image, K_out, xyz_out = apply(image, K, xyz, params, self.image_size, chw=True)
            item = {"image": torch.from_numpy(image), "K": K_out, "xyz": xyz_out}
        xyz_out = item.pop("xyz")
        has_xyz = xyz_out is not None
        item.update({
            "K": torch.from_numpy(item["K"].astype(np.float32)),
            "xyz_mm": torch.from_numpy((xyz_out * 1000.0 if has_xyz else np.zeros((21, 3))).astype(np.float32)),
            "index": index,
            "has_xyz": has_xyz,
        })
        return item


def _item_rng(seed: int) -> np.random.Generator:
    """A generator in a state that is a function of `seed` alone: this thread's PCG64, re-seeded.

    np.random.default_rng(seed) costs ~15 us per item (a SeedSequence and a new PCG64, about as much as
    everything else in an item but the decode and the warp); setting a reused PCG64's 128-bit state and
    increment from a hash of the seed costs ~3 us. The generator is shared: draw from it before the next call.
    """
    gen = getattr(_RNG, "gen", None)
    if gen is None:
        gen = _RNG.gen = np.random.Generator(np.random.PCG64())
    h = hashlib.blake2b(int(seed).to_bytes(16, "little", signed=True), digest_size=32).digest()
    gen.bit_generator.state = {
        "bit_generator": "PCG64", "has_uint32": 0, "uinteger": 0,
        "state": {"state": int.from_bytes(h[:16], "little"), "inc": int.from_bytes(h[16:], "little") | 1},
    }
    return gen


def _device_item(image: np.ndarray, cached: bool, params: AugmentParams | None, K: np.ndarray,
                 xyz: np.ndarray | None, size: int) -> dict:
    """The source image and the augmentation `warp_batch` applies; labels as the CPU path computes them."""
    params = params or AugmentParams()
    A, K_out, xyz_out = geometry(params, K, xyz, image.shape[1], size)
    jitter = _NO_JITTER
    if params.jitter is not None:
        M, pull = jitter_matrix(params.jitter)
        jitter = torch.from_numpy(np.hstack([M, [[pull]] * 3]).astype(np.float32))
    return {
        # A cached image is a read-only view into the mapped file; torch wants its own (writable) copy.
        "source": torch.from_numpy(image.copy() if cached else image),
        "warp": torch.from_numpy(A[:2]),  # float64: collated, then converted once per batch
        "blur": antialias_sigma(A),
        "jitter": jitter,
        "K": K_out,
        "xyz": xyz_out,
    }


def warp_batch(source: torch.Tensor, warp: torch.Tensor, size: int, blur: torch.Tensor | None = None,
               jitter: torch.Tensor | None = None) -> torch.Tensor:
    """The CPU path's colour jitter, anti-aliasing blur and bilinear warp, batched on source's device.

    source: uint8 (B, H, W, 3) RGB. warp: (B, 2, 3) affines from input to output pixels (OpenCV's
    convention, pixel centres at integers). blur: (B,) Gaussian sigmas in input px (0: none). jitter:
    (B, 3, 4): pixel' = M @ rgb + pull * mean grey, saturated (identity: none). Returns uint8 (B, 3, S, S);
    outside the source is black, as with cv2.BORDER_CONSTANT. Each intermediate is rounded to uint8 where
    the CPU path holds uint8, so the two differ only by OpenCV's 1/32 px fixed-point interpolation.
    blur and jitter may be None to skip them (pass None when no item needs them: each is a pass). warp,
    blur and jitter are small: keep them on the host; the per-batch algebra runs there and only its
    results move, so nothing here waits for the device.
    """
    b, h, w, _ = source.shape
    device = source.device
    x = source.permute(0, 3, 1, 2).float()  # (B, 3, H, W), channels-last in memory
    if jitter is not None:
        jitter = jitter.to(device, torch.float32, non_blocking=True)
        grey = torch.einsum("bchw,c->b", x, torch.as_tensor(LUMA, dtype=x.dtype).to(device)) / (h * w)
        offset = jitter[:, :, 3] * grey[:, None]  # (B, 3)
        x = (torch.einsum("bij,bjhw->bihw", jitter[:, :, :3], x) + offset[:, :, None, None]).round_().clamp_(0, 255)
    if blur is not None:
        x = _gaussian_blur(x, blur.cpu()).round_()
    theta = _grid_theta(warp.cpu().double(), w, h, size).float().to(device, non_blocking=True)
    grid = torch.nn.functional.affine_grid(theta, [b, 3, size, size], align_corners=False)
    out = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _grid_theta(warp: torch.Tensor, w: int, h: int, size: int) -> torch.Tensor:
    """affine_grid's theta for pixel affines `warp` (B, 2, 3): it maps OUTPUT normalised coordinates to INPUT
    ones (align_corners=False: -1 and 1 are the outer edges of the border pixels), n_in = N_in(A^-1(P_out(n_out)))."""
    a, b, c, d = warp[:, 0, 0], warp[:, 0, 1], warp[:, 1, 0], warp[:, 1, 1]
    inv = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2) / (a * d - b * c)[:, None, None]
    t_inv = -(inv @ warp[:, :, 2:]).squeeze(-1)  # input px of output px (0, 0)
    in_scale = torch.tensor([2.0 / w, 2.0 / h], dtype=warp.dtype)  # input px -> normalised, per row
    lin = inv * (size / 2.0) * in_scale[:, None]
    shift = (inv.sum(-1) * ((size - 1) / 2.0) + t_inv) * in_scale + in_scale / 2.0 - 1.0
    return torch.cat([lin, shift[:, :, None]], -1)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """cv2.GaussianBlur(ksize=(0, 0), sigma) per image (sigma 0: unchanged), reflect-101 borders, batched:
    every image gets a kernel of the batch's largest size, zero beyond its own radius. sigma on the host."""
    b, ch, h, w = x.shape
    sigma = sigma.double()
    radii = torch.where(sigma > 0, torch.round(sigma * 6.0 + 1.0).long() // 2, 0)  # OpenCV's 8-bit kernel size
    r = int(radii.max())
    if r == 0:
        return x
    offsets = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-offsets[None] ** 2 / (2.0 * sigma.clamp_min(1e-6)[:, None] ** 2))
    k = torch.where(offsets.abs()[None] <= radii[:, None], k, 0.0)
    k = torch.where((sigma > 0)[:, None], k, (offsets == 0).double()[None])
    k = (k / k.sum(-1, keepdim=True)).repeat_interleave(ch, 0).to(x.device, x.dtype)  # (B*3, 2r+1)
    y = torch.nn.functional.pad(x.reshape(1, b * ch, h, w), (r, r, r, r), mode="reflect")
    y = torch.nn.functional.conv2d(y, k[:, None, :, None], groups=b * ch)
    y = torch.nn.functional.conv2d(y, k[:, None, None, :], groups=b * ch)
    return y.reshape(b, ch, h, w)


class DeviceWarpLoader:
    """A DataLoader over `HandPoseDataset(..., device_warp=True)` whose batches come out finished on
    `device`: "image" uint8 (B, 3, S, S) warped there (see `warp_batch`), the other entries as the CPU path
    gives them (on the CPU, as a DataLoader yields them). Iterate it like the loader; len() is the loader's.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, device: torch.device | str, size: int):
        self.loader = loader
        self.dataset = loader.dataset
        self.device = torch.device(device)
        self.size = int(size)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict]:
        for batch in self.loader:
            yield finish_on_device(batch, self.device, self.size)


def finish_on_device(batch: dict, device: torch.device, size: int) -> dict:
    """A collated device_warp batch -> the CPU path's batch, its image warped on `device`."""
    batch = dict(batch)
    blur, jitter, warp = batch.pop("blur"), batch.pop("jitter"), batch.pop("warp")
    source = batch.pop("source").to(device, non_blocking=True)
    batch["image"] = warp_batch(source, warp, size, blur if bool((blur > 0).any()) else None,
                                None if bool((jitter == _NO_JITTER).all()) else jitter)
    return batch



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
    return _OneLineErrorsLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=drop_last,
        num_workers=num_workers, persistent_workers=num_workers > 0, pin_memory=pin_memory)


class _OneLineErrorsLoader(torch.utils.data.DataLoader):
    """A DataLoader whose workers' TuneHandErrors reach the caller as they were raised: one line.

    torch re-raises a worker's exception in the main process as `type(err)(text)`, where text is "Caught
    DataError in DataLoader worker process 0.", then the worker's whole traceback, whose last line is
    "tune_hand.errors.DataError: <the message>". This gives back the message alone.
    """

    def __iter__(self):
        try:
            yield from super().__iter__()
        except TuneHandError as e:
            if "\n" not in str(e):
                raise
            raise type(e)(worker_error_message(e)) from None


def worker_error_message(err: Exception) -> str:
    """The original one-line message of an exception torch re-raised from a DataLoader worker."""
    last = str(err).rstrip().splitlines()[-1]
    return last.removeprefix(f"{type(err).__module__}.{type(err).__qualname__}: ")


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
