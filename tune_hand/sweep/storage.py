"""Where experiments live: a local directory, an NFS mount, or a bucket URI (`s3://bucket/sweeps`).

    exp = join("s3://bkt/sweeps", "q1")                   # s3://bkt/sweeps/q1
    write_text(join(exp, "notes.txt"), "hello")
    with open_dir(exp, select=lambda files: ["notes.txt"]) as d:
        d.path / "notes.txt"                               # a local copy, gone after the block
        d.fetch("train_x/checkpoint_000002/checkpoint.pt", dest)   # one big file, on demand

Buckets go through `pyarrow.fs.FileSystem.from_uri`, the call Ray makes for
`RunConfig(storage_path=...)`, so tune-hand and Ray's trials read and write the same place
under the same settings. For an S3-compatible store (MinIO, Ceph, moto) name the endpoint
either way Ray accepts too:
  - in the environment, `AWS_ENDPOINT_URL_S3` (or `AWS_ENDPOINT_URL`) = `http://host:9000`:
    pyarrow's `from_uri` reads them (Arrow >= 15; not the bare `S3FileSystem()`
    constructor, apache/arrow#49643), as boto3 and the aws CLI do;
  - in the URI, `s3://bkt/sweeps?endpoint_override=host:9000&scheme=http` (pyarrow's query
    options; `join` keeps the query on every path it builds, as Ray's own URI class does).
The endpoint is baked into the filesystem object Ray pickles into each trial, so trials on
other nodes write to it without the variable; credentials are not (every node needs its own:
environment, profile or instance role).

A bucket holds objects, not directories, and an object appears whole or not at all (a PUT,
or a multipart upload, completes atomically): a reader never sees a torn tune-hand file.

Readers get a local directory (`open_dir`): the experiment itself when it is local, or a
temporary copy of the small files they need (chosen by `select` from one listing of the
prefix), deleted when the block ends. A fresh copy per command, never a cache: a bucket's
result files grow while a sweep runs, and deciding when a cached copy is stale costs the
same listing plus a comparison that can be wrong. Large files (checkpoints) are fetched one
at a time, on demand.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..errors import TuneHandError

CHUNK = 8 << 20  # bytes per read when copying a large object
FETCH_THREADS = 16  # small files are latency-bound (one GET each): fetch many at once


# -- URIs ------------------------------------------------------------------------------------
def is_remote(location: str | os.PathLike) -> bool:
    """A URI with a scheme other than file://; everything else is a local (or mounted) path."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def normalize(uri: str) -> str:
    """`uri` without a trailing slash on its path (the query, if any, kept)."""
    parts = urllib.parse.urlsplit(uri)
    return urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/")))


def join(base: str, *names: str) -> str:
    """`base/name/...` for a local path or a URI; a URI keeps its query (`?endpoint_override=...`)
    at the end, where pyarrow and Ray read it."""
    if not is_remote(base):
        return str(Path(base, *names))
    parts = urllib.parse.urlsplit(base)
    path = "/".join([parts.path.rstrip("/"), *(n.strip("/") for n in names)])
    return urllib.parse.urlunsplit(parts._replace(path=path))


def display(uri: str) -> str:
    """`uri` for messages: credentials in it (`s3://KEY:SECRET@bucket/...`, which pyarrow
    accepts) left out; the query (an endpoint) kept, so a printed URI still works."""
    parts = urllib.parse.urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def bucket(uri: str) -> str:
    return urllib.parse.urlsplit(uri).netloc.rsplit("@", 1)[-1]


def endpoint(uri: str) -> str:
    """Where an s3:// URI's requests go, and who said so (for messages), in pyarrow's order."""
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(uri).query))
    if "endpoint_override" in query:
        return f"{query['endpoint_override']}, from the URI"
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(var):
            return f"{os.environ[var]}, from {var}"
    return "AWS's own; no endpoint override"


# -- the filesystem --------------------------------------------------------------------------
def filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) of a URI; errors are one-line TuneHandErrors."""
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
        raise storage_error(uri, e) from None


def storage_error(uri: str, err: BaseException) -> TuneHandError:
    """A one-line error naming `uri` and what to do, from pyarrow's (AWS SDK's) message."""
    text = " ".join(str(err).split())
    name = bucket(uri)
    if re.search(r"NO_SUCH_BUCKET|Bucket '[^']*' not found|RESOURCE_NOT_FOUND during HeadBucket", text):
        why = f"bucket '{name}' does not exist (create it first, e.g. `aws s3 mb s3://{name}`)"
    elif re.search(r"ACCESS_DENIED|INVALID_ACCESS_KEY|SIGNATURE_DOES_NOT_MATCH|EXPIRED_TOKEN|credentials|"
                   r"Forbidden|\b403\b", text, re.IGNORECASE):
        why = ("access denied: no or wrong credentials (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
               "AWS_PROFILE or an instance role; every Ray node needs them)")
    elif re.search(r"NETWORK_CONNECTION|curlCode|Could not resolve|Couldn't connect", text):
        why = (f"cannot reach the storage endpoint ({endpoint(uri)}); for an S3-compatible store set "
               "AWS_ENDPOINT_URL_S3=http://HOST:PORT or add ?endpoint_override=HOST:PORT&scheme=http to the URI")
    elif re.search(r"Unrecognized filesystem type|not supported|support for .* not enabled", text, re.IGNORECASE):
        why = f"this pyarrow cannot open such a URI ({text[:160]})"
    else:
        why = f"storage error ({text[:200]})"
    return TuneHandError(f"{display(uri)}: {why}")


def list_files(uri: str) -> dict[str, int]:
    """Every object under `uri` (a prefix): path relative to it -> size. {} when there is none;
    a missing bucket or refused access is a TuneHandError."""
    import pyarrow.fs

    fs, root = filesystem(uri)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
    except OSError as e:
        raise storage_error(uri, e) from None
    prefix = root.rstrip("/") + "/"
    files = {i.path[len(prefix):]: i.size for i in infos
             if i.type == pyarrow.fs.FileType.File and i.path.startswith(prefix)}
    if not files:  # allow_not_found also hides a missing bucket: ask for the bucket itself
        try:
            missing = fs.get_file_info(root.split("/")[0]).type == pyarrow.fs.FileType.NotFound
        except OSError as e:
            raise storage_error(uri, e) from None
        if missing:
            raise storage_error(uri, OSError("NO_SUCH_BUCKET"))
    return files


def write_text(uri: str, text: str) -> None:
    """Write one object (a single PUT: it appears whole or not at all)."""
    fs, path = filesystem(uri)
    try:
        with fs.open_output_stream(path) as f:
            f.write(text.encode())
    except OSError as e:
        raise storage_error(uri, e) from None


def fetch_file(location: str, dest: str | os.PathLike) -> Path:
    """Copy one file (a local path or a URI) to `dest`."""
    if not is_remote(location):
        return Path(shutil.copyfile(location, dest))
    fs, path = filesystem(location)
    try:
        with fs.open_input_stream(path) as src, open(dest, "wb") as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)
    except OSError as e:
        raise storage_error(location, e) from None
    return Path(dest)


# -- a local view of an experiment -----------------------------------------------------------
@dataclass
class ExperimentDir:
    """An experiment's files as a local directory.

    uri: the location as the user named it (a resolved local path or a normalized URI), for
        messages and provenance.
    path: a local directory: the experiment itself, or for a bucket a temporary directory
        holding the copies `open_dir` made (valid until its block ends).
    """

    uri: str
    path: Path
    _files: dict[str, int] = field(default_factory=dict, repr=False)  # bucket: relative path -> size
    _fs: Any = field(default=None, repr=False)
    _root: str = field(default="", repr=False)

    @property
    def remote(self) -> bool:
        return self._fs is not None

    def has(self, rel: str) -> bool:
        """Whether the experiment holds the file `rel` (relative path, `/`-separated)."""
        return rel in self._files if self.remote else (self.path / rel).is_file()

    def fetch(self, rel: str, dest: str | os.PathLike | None = None) -> Path:
        """A local file with the content of `rel`: for a local experiment the file itself (or a
        copy at `dest`); for a bucket, downloaded into `dest` or into `path`."""
        if not self.remote:
            if dest is None:
                return self.path / rel
            return Path(shutil.copyfile(self.path / rel, dest))
        target = Path(dest) if dest is not None else self.path / rel
        if dest is None and target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        try:
            with self._fs.open_input_stream(f"{self._root}/{rel}") as src, open(tmp, "wb") as out:
                while chunk := src.read(CHUNK):
                    out.write(chunk)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise storage_error(join(self.uri, rel), e) from None
        os.replace(tmp, target)
        return target


@contextlib.contextmanager
def open_dir(location: str, select: Callable[[Iterable[str]], Iterable[str]]) -> Iterator[ExperimentDir]:
    """The experiment at `location` as an ExperimentDir. A local path is used in place
    (`select` is not called); for a URI, one listing of its prefix, then the files
    `select(listing)` picks are copied into a temporary directory, removed at the end of the
    block. A prefix holding nothing is a TuneHandError: no such experiment."""
    if not is_remote(location):
        yield ExperimentDir(uri=str(location), path=Path(location))
        return
    files = list_files(location)
    if not files:
        raise TuneHandError(f"{display(location)}: no experiment there (nothing stored under this prefix); "
                            "pass STORAGE/NAME as `tune-hand search` printed it")
    fs, root = filesystem(location)
    with tempfile.TemporaryDirectory(prefix="tune-hand-exp.") as tmp:
        exp = ExperimentDir(uri=location, path=Path(tmp), _files=files, _fs=fs, _root=root.rstrip("/"))
        wanted = [rel for rel in select(files) if rel in files]
        with ThreadPoolExecutor(FETCH_THREADS) as pool:  # pyarrow releases the GIL for I/O
            list(pool.map(exp.fetch, wanted))
        yield exp
