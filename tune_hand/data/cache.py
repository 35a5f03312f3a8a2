"""A decoded-image cache: every image of a split decoded once into one uint8 file on local disk, mapped.

Decoding a 224 px JPEG costs about as much as the augmentation warp (benchmarks/bench_input.py), and a
trial decodes each image once per epoch. With `data.cache` set, the first trial on a node decodes the
split once into `(N, H, W, 3)` uint8 RGB (the images exactly as `FreiHAND.read_image` returns them);
every trial on the node then maps that file read-only and items skip the decode. FreiHAND's training
split (130,240 images of 224 x 224 x 3) takes 19.6 GB: pages come from the OS page cache, shared by all
trials and DataLoader workers on the node, and cost no process memory.

    cache = open_cache(reader, "auto")   # None when off, or when the split does not fit on the disk
    image = cache[i] if cache is not None else reader.read_image(i)

Where: `data.cache = "auto"` is `$TUNE_HAND_CACHE_DIR` or, without it, `tune-hand-cache-<uid>` in the
system temp directory (`$TMPDIR`, which cluster schedulers point at node-local disk); any other value
is the directory. Use node-local disk: a cache on a network file system is read over the network.
The directory is created with mode 0700; an existing one that belongs to another user, or that others
may write to (group- or world-writable), is refused with a one-line `DataError` naming it and what to do:
whoever can write there could change the images every trial trains on. (Falling back to a private
directory elsewhere instead would rebuild the whole cache, gigabytes, in a place nobody cleans up.)

Once per node: a builder takes an exclusive `flock` on `<file>.lock`, checks again whether another
process has built the cache meanwhile, and otherwise writes a temporary file in the same directory and
renames it onto the cache file (`tune_hand.io.atomic_write`). Concurrent trials wait on the lock and
then map what the first one built; a builder that crashes leaves a temporary file (removed by the next
builder) and never a half-written cache; the kernel drops a dead process's lock.

Validity: the file is a 4 KiB header, the N * H * W * 3 pixels, and a CRC-32 of every image (4 bytes
each). The header holds a fingerprint of the split (its directory, its image count, and every image
file's size, modification and status-change time) and the array shape. The cache is rebuilt when the
fingerprint or the image size differs (the dataset changed), when its length is wrong (truncated), when
another user owns the file, or when its header, the CRC of its CRCs, or the CRCs of 16 images spread over
the file do not match (corrupted). Every other image is checked against its CRC the first time a process
reads it (~0.14 ms for 224 px, a tenth of a decode, once per image and process), so corruption anywhere
is a one-line `DataError` naming the file rather than a silently wrong image.

Not fitting: when the file would leave less than `reserve_bytes` free on the disk, or exceed
`max_bytes`, `open_cache` warns and returns None: items decode the JPEGs as without a cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import mmap
import os
import shutil
import sys
import tempfile
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DataError
from ..io import atomic_write
from .freihand import FreiHAND

HEADER_BYTES = 4096
MAGIC = b"tune-hand decoded image cache\n"
VERSION = 2
RESERVE_BYTES = 1 << 30  # leave this much free on the cache's disk
_CHECKED_IMAGES = 16
_BUILD_CHUNK = 64  # images decoded per round of the thread pool: bounds the memory a build holds


class CacheUnfit(UserWarning):
    """The decoded cache is off for this run (it does not fit, or the images cannot go in one array)."""


class DecodedCache:
    """The read side: `cache[i]` is image i, a read-only (H, W, 3) uint8 RGB view into the mapped file.

    Pickles without its mapping (a DataLoader worker started with spawn maps the file again on first use;
    forked workers share the parent's mapping), so it never copies the images between processes.
    """

    def __init__(self, path: str | Path, shape: tuple[int, int, int, int]):
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self._images: np.ndarray | None = None
        self._crcs: np.ndarray | None = None
        self._verified: np.ndarray | None = None  # images this process has checked against their CRC

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> np.ndarray:
        images = self._images if self._images is not None else self._map()
        image = images[i]
        if not self._verified[i]:
            if _crc(image) != self._crcs[i]:
                raise DataError(f"{self.path}: image {i} does not match its checksum (the decoded cache is corrupt); "
                                "delete the file (the next run rebuilds it) or set data.cache=''")
            self._verified[i] = True
        return image

    def _map(self) -> np.ndarray:
        with open(self.path, "rb") as f:  # the mapping outlives the descriptor
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        pixels = math.prod(self.shape)
        self._crcs = np.frombuffer(mapped, "<u4", count=self.shape[0], offset=HEADER_BYTES + pixels)
        self._verified = np.zeros(self.shape[0], dtype=bool)
        self._images = np.frombuffer(mapped, np.uint8, count=pixels, offset=HEADER_BYTES).reshape(self.shape)
        return self._images

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None, "_crcs": None, "_verified": None}

    def __repr__(self) -> str:
        return f"DecodedCache({str(self.path)!r}, shape={self.shape})"


def cache_dir(setting: str) -> Path | None:
    """The directory `data.cache` names: None for "" (off); "auto" -> $TUNE_HAND_CACHE_DIR, or
    tune-hand-cache-<uid> in the system temp directory ($TMPDIR)."""
    if not setting:
        return None
    if setting == "auto":
        env = os.environ.get("TUNE_HAND_CACHE_DIR")
        return Path(env) if env else Path(tempfile.gettempdir()) / f"tune-hand-cache-{os.getuid()}"
    return Path(setting).expanduser()


def open_cache(reader: FreiHAND, setting: str | Path, *, max_bytes: int | None = None,
               reserve_bytes: int = RESERVE_BYTES, threads: int | None = None,
               log: Callable[[str], None] | None = None) -> DecodedCache | None:
    """The decoded cache of `reader`'s split under `setting` (see `cache_dir`), building it if needed.

    Returns None when `setting` is "" (off), or, with a `CacheUnfit` warning, when the cache would exceed
    `max_bytes` or leave less than `reserve_bytes` free on its disk, or when the split's images do not all
    have the same size. Blocks while another process on the node builds the same cache. `threads` decode
    in parallel during a build (default: every core this process may use). `log` gets progress lines
    (default: stderr).
    """
    directory = cache_dir(str(setting))
    if directory is None:
        return None
    log = log or _stderr
    try:
        _private_directory(directory)
    except OSError as e:
        return _unfit(f"{directory}: cannot hold a decoded cache there ({e.strerror or e}); decoding the JPEGs "
                      "instead. Point data.cache at a writable local directory")
    first = reader.read_image(0)
    shape = (len(reader), *first.shape)
    if first.ndim != 3:
        return _unfit(f"{reader.image_path(0)} decodes to shape {first.shape}, not (H, W, 3)")
    fingerprint = dataset_fingerprint(reader)
    path = directory / _file_name(reader, shape)
    if (problem := check_cache(path, fingerprint, shape)) is None:
        return DecodedCache(path, shape)
    try:
        lock = _lock(path.with_name(path.name + ".lock"), log)
    except OSError as e:
        return _unfit(f"{directory}: cannot hold a decoded cache there ({e.strerror or e}); decoding the JPEGs "
                      "instead. Point data.cache at a writable local directory")
    try:
        # Whoever held the lock before us may have built it.
        if (problem := check_cache(path, fingerprint, shape)) is None:
            return DecodedCache(path, shape)
        _remove_leftovers(path)
        with contextlib.suppress(FileNotFoundError):  # stale; a trial still mapping it keeps its own copy
            path.unlink()
        need = _file_bytes(shape)
        free = shutil.disk_usage(directory).free
        if max_bytes is not None and need > max_bytes:
            return _unfit(f"{reader.rgb_dir}: the decoded cache needs {_gb(need)}, over the {_gb(max_bytes)} "
                          "allowed; decoding the JPEGs instead")
        if need > free - reserve_bytes:
            return _unfit(f"{reader.rgb_dir}: the decoded cache needs {_gb(need)} but {directory} has {_gb(free)} "
                          f"free (keeping {_gb(reserve_bytes)} spare); decoding the JPEGs instead. Point data.cache "
                          "at a larger local disk, or set data.cache='' to silence this")
        log(f"building the decoded image cache {path} ({shape[0]} images, {_gb(need)}; {problem})")
        try:
            _build(reader, path, fingerprint, shape, threads)
        except _Mismatch as e:
            return _unfit(f"{e}; decoding the JPEGs instead (the cache holds one image size)")
        except OSError as e:
            return _unfit(f"{path}: could not write the decoded cache ({e.strerror or e}); decoding the JPEGs "
                          "instead")
    finally:
        os.close(lock)  # releases the lock
    if (problem := check_cache(path, fingerprint, shape)) is not None:  # only if the disk lies to us
        return _unfit(f"{path}: the decoded cache just built does not read back ({problem}); decoding instead")
    return DecodedCache(path, shape)


def dataset_fingerprint(reader: FreiHAND) -> str:
    """sha256 over the split's image directory, image count and every image file's size, mtime and ctime.

    One stat per image (13 us each on the development machine's local disk: ~2 s for FreiHAND's 130,240
    training images): a changed, replaced or re-rendered image changes it, without reading any image; the
    status-change time also catches a replacement that kept the old mtime (cp -p, rsync -t), as no user
    can set it.
    """
    h = hashlib.sha256(f"{reader.rgb_dir.resolve()}\n{len(reader)}\n".encode())
    prefix = os.path.join(str(reader.rgb_dir), "")
    for i in range(len(reader)):
        st = os.stat(f"{prefix}{i:08d}.jpg")
        h.update(f"{st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}\n".encode())
    return h.hexdigest()


def check_cache(path: Path, fingerprint: str, shape: tuple[int, ...]) -> str | None:
    """None if `path` is a complete cache of this split at this shape, else why not (one line)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "none yet"
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if st.st_uid != os.getuid():
        return f"owned by uid {st.st_uid}, not by this user"
    if st.st_size != _file_bytes(shape):
        return f"truncated or foreign: {st.st_size} bytes, expected {_file_bytes(shape)}"
    header = _read_header(path)
    if header is None:
        return "its header is corrupt"
    if header.get("version") != VERSION or list(header.get("shape", ())) != list(shape):
        return f"made for shape {header.get('shape')} (format {header.get('version')})"
    if header.get("fingerprint") != fingerprint:
        return "the dataset changed since it was built"
    images = DecodedCache(path, shape)
    images._map()
    if zlib.crc32(images._crcs.data) != header.get("crcs"):
        return "its image checksums do not match their checksum (corrupt)"
    for i in _spot_checked(shape[0]):
        if _crc(images._images[i]) != images._crcs[i]:
            return f"image {i} does not match its checksum (corrupt)"
    return None


def _build(reader: FreiHAND, path: Path, fingerprint: str, shape: tuple[int, ...], threads: int | None) -> None:
    n = shape[0]
    crcs = np.zeros(n, dtype="<u4")
    threads = threads or len(os.sched_getaffinity(0))

    def write(f) -> None:
        f.write(b"\0" * HEADER_BYTES)  # the real header goes in last: a complete file is one with a header
        with ThreadPoolExecutor(max_workers=threads) as pool:  # cv2 decodes without the GIL
            for start in range(0, n, _BUILD_CHUNK):
                indices = range(start, min(start + _BUILD_CHUNK, n))
                for i, image in zip(indices, pool.map(reader.read_image, indices)):
                    if image.shape != shape[1:]:
                        raise _Mismatch(f"{reader.image_path(i)} is {image.shape}, but image 0 is {shape[1:]}")
                    crcs[i] = _crc(image)
                    f.write(np.ascontiguousarray(image).data)
        f.write(crcs.data)
        header = json.dumps({"version": VERSION, "fingerprint": fingerprint, "shape": list(shape),
                             "rgb_dir": str(reader.rgb_dir.resolve()), "crcs": zlib.crc32(crcs.data)}).encode()
        if len(MAGIC) + len(header) > HEADER_BYTES:
            raise AssertionError("decoded cache header overflow")
        f.seek(0)
        f.write(MAGIC + header)

    atomic_write(path, write)


def _read_header(path: Path) -> dict | None:
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError:
        return None
    if not raw.startswith(MAGIC):
        return None
    try:
        header = json.loads(raw[len(MAGIC):].rstrip(b"\0"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return header if isinstance(header, dict) else None


def _lock(lock_path: Path, log: Callable[[str], None]) -> int:
    """A descriptor holding an exclusive flock on lock_path (created if needed, never deleted: deleting a
    lock file races); os.close() releases it, and so does the kernel when the process dies."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log(f"waiting for another process to finish the decoded image cache ({lock_path})")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
    return fd


def _private_directory(directory: Path) -> None:
    """Create `directory` with mode 0700, or check that an existing one is this user's and only theirs."""
    try:
        directory.mkdir(mode=0o700, parents=True)
        return
    except FileExistsError:
        pass
    st = directory.stat()
    if not os.path.isdir(directory):
        raise NotADirectoryError(20, "not a directory")
    change = "point data.cache (or $TUNE_HAND_CACHE_DIR) at a directory of your own"
    if st.st_uid != os.getuid():
        raise DataError(f"{directory}: the decoded-image cache directory belongs to uid {st.st_uid}, not to you "
                        f"(uid {os.getuid()}), so its owner could change the images trials read; {change}")
    if st.st_mode & 0o022:
        raise DataError(f"{directory}: the decoded-image cache directory is writable by others (mode "
                        f"{st.st_mode & 0o777:o}), so they could change the images trials read; make it private "
                        f"(chmod 700 {directory}) or {change}")


def _file_bytes(shape: tuple[int, ...]) -> int:
    """header + pixels + a CRC-32 per image"""
    return HEADER_BYTES + math.prod(shape) + 4 * shape[0]


def _spot_checked(n: int) -> list[int]:
    """The images every open checks: _CHECKED_IMAGES of them spread evenly over the file."""
    return sorted({round(k * (n - 1) / (_CHECKED_IMAGES - 1)) for k in range(_CHECKED_IMAGES)})


def _remove_leftovers(path: Path) -> None:
    """Temporary files of builders that died (we hold the lock, so no live builder owns one)."""
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


def _file_name(reader: FreiHAND, shape: tuple[int, ...]) -> str:
    """<dataset dir>-<split>-<hash of its absolute path>-<H>x<W>x<C>.u8: one file per split and image size;
    a changed dataset rebuilds the same file (no stale copies pile up)."""
    where = hashlib.sha256(str(reader.rgb_dir.resolve()).encode()).hexdigest()[:12]
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in reader.root.resolve().name) or "data"
    return f"{slug}-{reader.split}-{where}-{'x'.join(map(str, shape[1:]))}.u8"


def _crc(image: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(image).data)


def _gb(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def _unfit(message: str) -> None:
    warnings.warn(message, CacheUnfit, stacklevel=3)
    return None


def _stderr(message: str) -> None:
    print(f"tune-hand: {message}", file=sys.stderr, flush=True)


class _Mismatch(Exception):
    pass
