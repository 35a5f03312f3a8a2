"""Signed sweep state: what Ray would unpickle on `resume` is checked against a key first.

    signer = start_signing("sweeps/q1")                # search: the key (made on first use)
    signer.sign_stored("tuner.pkl")                    # Ray wrote it straight to storage
    signer.sign_snapshot(staging_dir, session)         # after every experiment snapshot
    signer = verify_experiment("sweeps/q1")            # resume: before Tuner.restore
    trust_experiment("sweeps/q1")                      # an unsigned (older) sweep, by an explicit act

`Tuner.restore` unpickles files from the experiment directory (`tuner.pkl`,
`searcher-state-*.pkl`, `callback-states-*.pkl`, the cloudpickle blobs inside
`experiment_state-*.json`, `search_gen_state-*.json`, `basic-variant-state-*.json`; trial
directories hold `params.pkl` and `error.pkl`). Whoever can write the shared storage could
otherwise run code as whoever resumes the sweep. So every such file (`unpicklable`) is listed
in `tune_hand_signatures.json` with HMAC-SHA256(key, path + bytes), and a resume refuses,
before anything is unpickled, any such file that is missing from the list or does not match.
The relative path is inside the MAC, so a signed file cannot be moved to a name Ray loads.

The key never lives with the experiment: one per user, `~/.config/tune-hand/key` (32 random
bytes, hex, mode 0600, made on first use by `search` and `trust`), or `$TUNE_HAND_KEY_FILE`,
or `--key-file`. A key file others can read, or owned by another user (root aside, as sshd
does: a mounted secret), is refused. The
manifest names the key by an id (a MAC of a constant), so a wrong key is told apart from a
tampered file.

Where the signing happens: the driver wraps Ray's `TuneController.save_to_dir`, the one
function that writes an experiment snapshot into the driver's local staging directory,
which Ray uploads right after it returns (`driver._signed_snapshots` says why there and not
in a scheduler or a Callback). Each path keeps its last `HISTORY` MACs: Ray uploads a
snapshot file by file, so a driver killed mid-upload leaves some files of snapshot N and
some of N+1; the manifest of N+1 (which still accepts N) is written into the experiment
before that upload starts, so whatever mix is left verifies (a file torn mid-write does
not, and is refused). Accepting an older authentic version allows a rollback to an earlier
state of the same sweep, never foreign code. `tuner.pkl`, which Ray writes straight into
the experiment when the Tuner is built, is signed right after.

A bucket experiment is verified the same way, on copies of the files fetched from one
listing (`storage.open_dir`); the manifest is written with one PUT.

What this does not cover: someone who holds the key (it is the user's own secret); a file
swapped between this check and Ray's own read of it, seconds later (a race the attacker must
win while the resume starts; for a bucket, between the copy checked here and Ray's
download). The stronger design restores without pickles: rebuild the Tuner from
`tune_hand_spec.yaml`, the Optuna study and ASHA's rungs from the trials' `result.json` (the
report already rebuilds the study), the trial list from `experiment_state` read as plain
JSON, and let each trial find its own checkpoint (loaded with weights_only). That needs no
key and has no race, but it replaces Ray's resume (trial ids, the searcher's and
scheduler's state, the tested no-rerun guarantees) and old sweeps would still need Ray's
path; it is the follow-up, not this change.

No Ray here: the readers' level, below the driver.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import hmac
import json
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import TuneHandError
from ..io import atomic_write
from .storage import display, is_remote, join, open_dir, write_text

KEY_ENV = "TUNE_HAND_KEY_FILE"
DEFAULT_KEY_FILE = "~/.config/tune-hand/key"
MANIFEST = "tune_hand_signatures.json"
HISTORY = 4  # MACs kept per path: the snapshots a killed upload can leave mixed, and spare
# Files Ray may unpickle on restore: any pickle, and the JSON files that carry cloudpickle blobs.
PICKLED_JSON = ("experiment_state-*.json", "search_gen_state-*.json", "basic-variant-state-*.json")
_DOMAIN = b"tune-hand signed state v1\0"
_CHUNK = 1 << 20


# -- the key -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Key:
    secret: bytes = field(repr=False)
    path: Path

    @property
    def id(self) -> str:
        """Names the key in a manifest without revealing it."""
        return hmac.new(self.secret, b"tune-hand key id", hashlib.sha256).hexdigest()[:16]

    def mac(self, rel: str, path: Path) -> str:
        """HMAC-SHA256 of a file's bytes, its `/`-separated path relative to the experiment bound in."""
        h = hmac.new(self.secret, _DOMAIN + rel.encode() + b"\0", hashlib.sha256)
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        return h.hexdigest()


def key_path(key_file: str | os.PathLike | None = None) -> Path:
    """--key-file, else $TUNE_HAND_KEY_FILE, else ~/.config/tune-hand/key."""
    return Path(key_file or os.environ.get(KEY_ENV) or DEFAULT_KEY_FILE).expanduser()


def load_key(key_file: str | os.PathLike | None = None, create: bool = False) -> Key:
    """The user's key; with `create`, a new one is written (mode 0600) if there is none."""
    path = key_path(key_file)
    if not path.exists():
        if not create:
            raise TuneHandError(f"no tune-hand key at {path}: the sweep is signed with the key of the machine that "
                                f"started it; copy that {DEFAULT_KEY_FILE} here (mode 0600) or point ${KEY_ENV} or "
                                "--key-file at it")
        _create_key(path)
    return Key(_read_key(path), path)


def _create_key(path: Path) -> None:
    """32 random bytes, hex, at mode 0600; written aside, then linked into place, so two first
    uses at once end with one key and nobody reads a half-written one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # made by another process meanwhile: use that one
    finally:
        tmp.unlink(missing_ok=True)
    print(f"tune-hand: created a signing key at {path} (mode 0600); a resume elsewhere needs a copy of it",
          file=sys.stderr)


def _read_key(path: Path) -> bytes:
    info = path.stat()
    if info.st_uid not in (os.getuid(), 0):
        raise TuneHandError(f"{path}: the tune-hand key is owned by uid {info.st_uid}, not you (uid {os.getuid()}), "
                            "so someone else can change it; use a copy of your own: cp it, then chmod 600")
    if info.st_mode & 0o077:
        raise TuneHandError(f"{path}: the tune-hand key is readable or writable by others (mode "
                            f"{info.st_mode & 0o777:04o}); run `chmod 600 {path}`")
    text = path.read_text().strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) < 32:
        raise TuneHandError(f"{path}: not a tune-hand key (expected 64 hex digits); move it away and a new one is "
                            "made on the next `tune-hand search`")
    return secret


# -- which files ---------------------------------------------------------------------------
def unpicklable(rel: str) -> bool:
    """Whether Ray may unpickle the file at `rel` (relative to the experiment) on a restore."""
    name = rel.rsplit("/", 1)[-1]
    return name.endswith(".pkl") or any(fnmatch.fnmatchcase(name, p) for p in PICKLED_JSON)


def _walk(root: Path) -> list[str]:
    """Every file below `root` (symbolic links to files included), as sorted `/` paths."""
    out = []
    for here, _, files in os.walk(root):
        rel_dir = Path(here).relative_to(root).as_posix()
        out += [name if rel_dir == "." else f"{rel_dir}/{name}" for name in files]
    return sorted(out)


# -- the manifest --------------------------------------------------------------------------
@dataclass
class Signer:
    """An experiment's manifest in memory, with the key that extends it and where it is written."""

    exp: str
    key: Key
    files: dict[str, list[str]] = field(default_factory=dict)  # rel -> MACs, newest first
    _seen: dict[str, tuple[int, int, str]] = field(default_factory=dict, repr=False)  # rel -> (mtime, size, mac)

    def add(self, rel: str, mac: str) -> bool:
        macs = self.files.setdefault(rel, [])
        if macs[:1] == [mac]:
            return False
        self.files[rel] = [mac] + [m for m in macs if m != mac][:HISTORY - 1]
        return True

    def accepts(self, rel: str, mac: str) -> bool:
        return any(hmac.compare_digest(mac, m) for m in self.files.get(rel, ()))

    def sign_stored(self, rel: str) -> None:
        """Sign a file Ray wrote straight into the experiment (`tuner.pkl`), then save."""
        with open_dir(self.exp, lambda files: [rel]) as opened:
            path = opened.path / rel
            if not path.is_file():
                raise TuneHandError(f"{display(join(self.exp, rel))}: Ray wrote no such file; cannot sign the sweep")
            self.add(rel, self.key.mac(rel, path))
        self.save()

    def sign_snapshot(self, staging: str | os.PathLike, session: str) -> None:
        """Sign what Ray's experiment snapshot just wrote into its local staging directory, and
        save the manifest to the experiment and beside the snapshot (Ray uploads that copy too,
        so it must never be older than ours). Top-level files of other sessions (downloaded
        from the storage on restore) are signed only if they already were: a file slipped into
        the storage after the resume's check is never signed into the manifest."""
        staging = Path(staging)
        changed = False
        for rel in filter(unpicklable, _walk(staging)):
            mac = self._mac_cached(rel, staging / rel)
            if "/" in rel or f"-{session}." in rel:
                changed |= self.add(rel, mac)
            elif not self.accepts(rel, mac):
                print(f"tune-hand: warning: {rel} in Ray's staging directory is from another run and does not match "
                      f"{MANIFEST}; left unsigned (a resume will refuse it)", file=sys.stderr)
        if changed or not (staging / MANIFEST).is_file():
            self.save(staging)

    def _mac_cached(self, rel: str, path: Path) -> str:
        info = path.stat()
        seen = self._seen.get(rel)
        if seen is None or seen[:2] != (info.st_mtime_ns, info.st_size):
            seen = (info.st_mtime_ns, info.st_size, self.key.mac(rel, path))
            self._seen[rel] = seen
        return seen[2]

    def text(self) -> str:
        return json.dumps({"format": 1, "key_id": self.key.id, "files": self.files}, indent=1, sort_keys=True) + "\n"

    def save(self, staging: Path | None = None) -> None:
        """Write the manifest into the experiment (atomically: a rename, or one PUT) and, given
        Ray's staging directory, beside the snapshot there."""
        text = self.text()
        if is_remote(self.exp):
            write_text(join(self.exp, MANIFEST), text)
        else:
            _write_local(Path(self.exp) / MANIFEST, text)
        if staging is not None:
            _write_local(staging / MANIFEST, text)


def _write_local(path: Path, text: str) -> None:
    os.chmod(atomic_write(path, lambda f: f.write(text), mode="w"), 0o644)


def _read_manifest(path: Path, where: str) -> tuple[str, dict[str, list[str]]]:
    try:
        data = json.loads(path.read_text())
        key_id, files = data["key_id"], data["files"]
        if not (isinstance(key_id, str) and isinstance(files, dict)
                and all(isinstance(m, list) and all(isinstance(x, str) for x in m) for m in files.values())):
            raise ValueError("unexpected structure")
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise TuneHandError(f"{where}: unreadable ({' '.join(str(e).split())[:120]}); nothing was loaded from this "
                            "sweep") from None
    return key_id, {rel: list(m) for rel, m in files.items()}


# -- the library functions -----------------------------------------------------------------
def start_signing(exp: str, key_file: str | os.PathLike | None = None) -> Signer:
    """A new sweep's signer (the key made on first use), checked before Ray starts."""
    return Signer(exp, load_key(key_file, create=True))


def verify_experiment(exp: str, key_file: str | os.PathLike | None = None) -> Signer:
    """Check every file Ray may unpickle in `exp` against its manifest, before any is read;
    return the signer that goes on signing the resumed sweep. Every refusal is one
    TuneHandError line."""
    with _opened(exp) as (local, files):
        targets = [rel for rel in files if unpicklable(rel)]
        if not targets:
            raise TuneHandError(f"{display(exp)}: Ray has no experiment state to restore here (did the search start?)")
        if MANIFEST not in files:
            raise TuneHandError(f"{display(exp)}: unsigned (no {MANIFEST}: older, or not yours); nothing was "
                                f"loaded. If you wrote it: `tune-hand trust {display(exp)}`")
        key = load_key(key_file)
        key_id, manifest = _read_manifest(local / MANIFEST, display(join(exp, MANIFEST)))
        if not hmac.compare_digest(key_id, key.id):
            raise TuneHandError(f"{key.path}: not the key this sweep was signed with (id {key.id[:8]}, the sweep's "
                                f"{key_id[:8]}): signed with another key, nothing was loaded; copy the signing "
                                f"machine's {DEFAULT_KEY_FILE} (mode 0600), or use ${KEY_ENV} / --key-file")
        signer = Signer(exp, key, manifest)
        bad = [rel for rel in targets if not signer.accepts(rel, key.mac(rel, local / rel))]
        if bad:
            rel, more = bad[0], f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            why = (f"not signed (not in {MANIFEST}){more}; remove it if it is not yours" if rel not in manifest else
                   f"does not match its signature{more}: changed by someone, or torn by a kill mid-write")
            raise TuneHandError(f"{display(join(exp, rel))}: {why}; nothing was unpickled (if you know it is yours: "
                                "`tune-hand trust` the sweep)")
        return signer


def trust_experiment(exp: str, key_file: str | os.PathLike | None = None) -> list[str]:
    """Sign the files Ray may unpickle in `exp` as they are now (an explicit act of trust in a
    sweep written before signing, or after a refusal the user has looked into); prints each."""
    key = load_key(key_file, create=True)
    with _opened(exp) as (local, files):
        targets = [rel for rel in files if unpicklable(rel)]
        if not targets:
            raise TuneHandError(f"{display(exp)}: nothing here that Ray would unpickle (did the search start?)")
        manifest: dict[str, list[str]] = {}
        if MANIFEST in files:
            key_id, old = _read_manifest(local / MANIFEST, display(join(exp, MANIFEST)))
            manifest = old if hmac.compare_digest(key_id, key.id) else {}
        for rel in targets:
            print(f"tune-hand: trust: signing {rel} ({(local / rel).stat().st_size} bytes)", file=sys.stderr)
        signer = Signer(exp, key, manifest)
        for rel in targets:
            signer.add(rel, key.mac(rel, local / rel))
    signer.save()
    print(f"tune-hand: trust: signed {len(targets)} files of {display(exp)} with {key.path} (id {key.id}) "
          f"into {MANIFEST}", file=sys.stderr)
    return targets


@contextlib.contextmanager
def _opened(exp: str) -> Iterator[tuple[Path, list[str]]]:
    """(local directory, every file's relative path) of an experiment: a local one in place; a
    bucket's from one listing, with copies of the files Ray may unpickle and of the manifest."""
    listing: list[str] = []

    def select(files):
        listing[:] = sorted(files)
        return [f for f in listing if unpicklable(f) or f == MANIFEST]

    with open_dir(exp, select) as opened:
        yield opened.path, (listing if opened.remote else _walk(opened.path))
