"""Atomic file output: a reader never sees a half-written file or directory, and files that belong
together (`CommittedFiles`) change together."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same directory and a rename."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write(path: str | os.PathLike, write: Callable[[Any], Any], mode: str = "wb") -> Path:
    """Call `write(fileobj)` on a temporary sibling of `path`, fsync, then rename onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


MAX_YAML_BYTES = 1 << 20  # a spec or config is a few KB; anything near this is not one
MAX_YAML_DEPTH = 32


def read_yaml(path: str | os.PathLike, what: str = "file") -> Any:
    """yaml.safe_load of a file; unreadable, non-UTF-8, oversized or invalid YAML, anchors and
    aliases (a "billion laughs" document expands when its values are walked) and absurd
    nesting are each a one-line ConfigError naming the file."""
    import yaml

    from .errors import ConfigError

    path = Path(path)
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes is too large for a {what} "
                              f"(at most {MAX_YAML_BYTES})")
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {what} ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: a {what} must be UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, (yaml.AnchorToken, yaml.AliasToken)):
                raise ConfigError(f"{path}: line {token.start_mark.line + 1}: YAML anchors and aliases "
                                  f"(&name, *name) are not allowed in a {what}; write the values out")
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())[:200]})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply for a {what}") from None
    if _depth(data) > MAX_YAML_DEPTH:
        raise ConfigError(f"{path}: nested more than {MAX_YAML_DEPTH} levels deep; not a {what}")
    return data


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_YAML_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Atomically write `obj` as JSON."""
    text = json.dumps(obj, indent=indent, sort_keys=False) + "\n"
    return atomic_write(path, lambda f: f.write(text), mode="w")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `path` only if the block succeeds.

    On any exception the temporary directory is removed and `path` is untouched. With
    `overwrite=False` an existing non-empty `path` is refused before anything is written.
    """
    from .errors import TuneHandError

    path = Path(path)
    if path.exists() and not overwrite and (not path.is_dir() or any(path.iterdir())):
        raise TuneHandError(f"{path}: already exists and is not empty; choose another path or remove it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


MANIFEST = "commit.json"
_FORMAT = "tune-hand-commit/1"
_KILL_ENV = "TUNE_HAND_TEST_KILL_AT"  # tests only: SIGKILL this process at the named point of a commit


class CommittedFiles:
    """Files in one directory that change together: after a kill at any point, they hold one commit.

        files = CommittedFiles(out, ["checkpoint.pt", "best.pt", "metrics.jsonl"])  # repairs a cut-short commit
        files.commit({"checkpoint.pt": blob, "metrics.jsonl": text.encode()}, epoch=3)

    A commit (1) writes each changed file as `.NAME.next` and fsyncs it; (2) writes the manifest
    `commit.json` ({"epoch": ..., "files": {NAME: sha256}} for every file of the set that exists, changed
    or not) as `.commit.json.next` and renames it into place: that rename is the commit point; (3) renames
    each `.NAME.next` onto NAME.

    Why that is enough: a rename is atomic, so after a kill each file is its old version or complete, and
    commit.json is the old commit's or the new one's. Killed before the commit point, commit.json names
    the old commit, whose files are all in place (its step 3 finished, or the repair below finished it);
    the `.next` files are unreferenced. Killed after it, each file of the new commit is in place already
    or is still a `.next` holding the digest commit.json names. The repair (on construction) renames every
    `.next` whose digest commit.json names (rolling the commit forward) and deletes every other temporary;
    it is idempotent, so a kill during a repair is repaired by the next one. Only `.next` files are
    hashed, and only after a crash; a directory without commit.json (written before it existed) keeps its
    files as they are.
    """

    def __init__(self, directory: str | os.PathLike, names: Iterable[str]):
        self.directory = Path(directory)
        self.names = tuple(names)
        self.manifest = self._repair()

    @property
    def digests(self) -> dict[str, str]:
        return dict(self.manifest.get("files", {}))

    def commit(self, changed: dict[str, bytes], **info: Any) -> dict:
        """Replace the files in `changed` ({name: content}) and record `info` (JSON) in the manifest, as one
        commit; the set's other files stay as they are. Returns the new manifest."""
        unknown = set(changed) - set(self.names)
        if unknown:
            raise ValueError(f"{sorted(unknown)}: not files of this set ({', '.join(self.names)})")
        self.directory.mkdir(parents=True, exist_ok=True)
        files = self.digests
        for name, data in changed.items():
            _write_synced(self._staged(name), data)
            files[name] = hashlib.sha256(data).hexdigest()
            _test_kill(f"staged {name}")
        manifest = {"format": _FORMAT, **info, "files": files}
        _write_synced(self._staged(MANIFEST), (json.dumps(manifest, indent=1) + "\n").encode())
        _test_kill(f"staged {MANIFEST}")
        os.replace(self._staged(MANIFEST), self.directory / MANIFEST)
        _fsync_dir(self.directory)
        self.manifest = manifest
        _test_kill("committed")
        for name in changed:
            os.replace(self._staged(name), self.directory / name)
            _test_kill(f"moved {name}")
        _fsync_dir(self.directory)
        return manifest

    def _repair(self) -> dict:
        manifest = self._read_manifest()
        for name, digest in manifest.get("files", {}).items():
            staged = self._staged(name)
            if staged.is_file() and _sha256_file(staged) == digest:
                os.replace(staged, self.directory / name)  # roll the commit forward
        remove_temporaries(self.directory, (*self.names, MANIFEST))
        _fsync_dir(self.directory)
        if "files" not in manifest:  # before commit.json existed: take the files in place as they are
            manifest = {"files": {name: _sha256_file(self.directory / name) for name in self.names
                                  if (self.directory / name).is_file()}}
        return manifest

    def _read_manifest(self) -> dict:
        path = self.directory / MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            from .errors import TuneHandError

            raise TuneHandError(f"{path}: not a readable commit manifest ({type(e).__name__}); it is written "
                                "only by rename, so something else changed it: restore it or remove the "
                                "directory") from None
        return manifest if isinstance(manifest, dict) and manifest.get("format") == _FORMAT else {}

    def _staged(self, name: str) -> Path:
        return self.directory / f".{name}.next"


def remove_temporaries(directory: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Delete what a killed writer of `names` in `directory` left: `.NAME.next` and `atomic_write`'s
    `.NAME.*.tmp`. Only for a directory no live process is writing (a run's own, at its start)."""
    directory = Path(directory)
    removed = []
    for name in names:
        for leftover in (*directory.glob(f".{name}.next"), *directory.glob(f".{name}.*tmp")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed.append(leftover)
    return removed


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    """Make the renames in `directory` durable (a power cut, not only a kill); best effort."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _test_kill(point: str) -> None:
    if os.environ.get(_KILL_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)
