"""The experiment directory: where a sweep lives, the two files tune-hand adds, opening it.

    EXP = STORAGE/NAME              a local directory, an NFS path, or a bucket URI (s3://bkt/sweeps/q1)
    EXP/tune_hand_spec.yaml         the effective spec, base config inlined (self-contained)
    EXP/tune_hand_sweep.json        spec hash, dataset, metric/mode, epoch budget, creation time, the spec
    EXP/<Ray's files>               trial directories, experiment_state-*.json, tuner.pkl, ...

    with open_experiment("s3://bkt/sweeps/q1") as exp:     # a temporary copy of the small files
        spec, meta = read_experiment(exp)

Everything `resume`, `status` and `best` need lives there. On a multi-node cluster the storage
must be shared (NFS path or bucket URI): Ray writes trial results and checkpoints there.
Note (Ray 2.60): after a run Ray re-syncs its staged copy of the experiment directory, older
`experiment_state-*.json` files and ours included, so never rely on mtimes there and never
edit our files while a sweep runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from ..errors import TuneHandError
from ..io import read_yaml
from .parse import parse_spec
from .spec import Spec, spec_diff, spec_hash
from .lock import LOCK_FILE
from .storage import ExperimentDir, display, is_remote, join, list_files, normalize, open_dir, write_text

SPEC_FILE = "tune_hand_spec.yaml"
SWEEP_FILE = "tune_hand_sweep.json"
DEFAULT_STORAGE = "sweeps"
CARRIED_FILE = "tune_hand_carried.json"  # in a trial directory `fork` carried from another experiment
TRIAL_FILES = ("params.json", "result.json", "error.txt", CARRIED_FILE)  # what status, best and the report read per trial

Experiment = str | Path | ExperimentDir  # a local directory, a bucket URI, or one already opened


def open_experiment(exp_dir: Experiment, trials: bool = True):
    """A context manager giving the experiment as an ExperimentDir: a local experiment in
    place; for a bucket a temporary copy of the files the readers below need, made from one
    listing: our two files, the newest experiment_state-*.json and, with `trials`, each trial's
    params.json, result.json and error.txt (checkpoints stay in the bucket until fetched).
    Open one once when calling several readers: each reader given a path opens its own.

        with open_experiment("s3://bkt/sweeps/q1") as exp:
            status, results = load_status(exp), trial_results(exp)
    """
    if isinstance(exp_dir, ExperimentDir):
        return contextlib.nullcontext(exp_dir)
    return open_dir(exp_path(exp_dir), lambda files: _files_to_read(files, trials))




def _files_to_read(files, trials: bool) -> list[str]:
    top = [f for f in files if "/" not in f]
    # Newest by the timestamp in the name, as Ray chooses (never by mtime: see the module note).
    states = sorted(f for f in top if f.startswith("experiment_state-") and f.endswith(".json"))
    wanted = [SPEC_FILE, SWEEP_FILE] + states[-1:]
    if trials:
        wanted += [f for f in files if f.count("/") == 1 and f.rsplit("/", 1)[1] in TRIAL_FILES]
    return wanted


def read_experiment(exp_dir: Experiment) -> tuple[Spec, dict[str, Any]]:
    """(spec, sweep metadata) stored with an experiment by `run_search`."""
    with open_experiment(exp_dir, trials=False) as exp:
        spec_file, meta_file = exp.path / SPEC_FILE, exp.path / SWEEP_FILE
        if not spec_file.is_file() or not meta_file.is_file():
            raise TuneHandError(f"{display(exp.uri)}: not a tune-hand experiment (no {SPEC_FILE} / {SWEEP_FILE})")
        raw = read_yaml(spec_file, "sweep spec")  # one line naming the file for anything malformed
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError, RecursionError) as e:
            raise TuneHandError(f"{join(display(exp.uri), SWEEP_FILE)}: unreadable ({' '.join(str(e).split())[:200]})"
                                ) from None
        if not isinstance(meta, dict) or not isinstance(meta.get("data_dir", ""), str):
            raise TuneHandError(f"{join(display(exp.uri), SWEEP_FILE)}: not the metadata tune-hand writes "
                                "(expected a JSON object with spec_hash, data_dir, ...)")
        return parse_spec(raw, source=join(display(exp.uri), SPEC_FILE)), meta


def sweep_meta(spec: Spec, name: str, data_dir: str) -> dict[str, Any]:
    """The contents of tune_hand_sweep.json for a new sweep."""
    return {"spec_hash": spec_hash(spec), "name": name, "spec_name": spec.name, "data_dir": data_dir,
            "metric": spec.metric, "mode": spec.mode, "max_epochs": spec.max_epochs,
            "num_samples": spec.num_samples, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "spec": spec.to_dict()}


def write_experiment(exp: str, spec: Spec, meta: dict[str, Any]) -> None:
    """Write our two files into a new experiment (each atomically; before Ray writes anything)."""
    _write_text(join(exp, SPEC_FILE), spec.to_yaml())
    write_meta(exp, meta)


def write_meta(exp: str, meta: dict[str, Any]) -> None:
    """Replace tune_hand_sweep.json (atomically)."""
    _write_text(join(exp, SWEEP_FILE), json.dumps(meta, indent=2) + "\n")


def check_unchanged(exp: str, meta: dict[str, Any], spec: Spec) -> None:
    """Refuse to continue a sweep under a spec other than the one it started with: its trials,
    Optuna's study and ASHA's rungs all belong to that spec."""
    new_hash = spec_hash(spec)
    if new_hash == meta.get("spec_hash"):
        return
    changes = spec_diff(meta["spec"], spec.to_dict()) if isinstance(meta.get("spec"), dict) else []
    what = "; ".join(changes) or f"spec hash {meta.get('spec_hash')} -> {new_hash}"
    raise TuneHandError(f"{display(exp)}: the spec differs from the one this sweep started with ({what}); "
                        f"a sweep resumes only under its own spec ({SPEC_FILE}): restore it, or start "
                        "a new sweep with another --name")


def has_run(exp: str) -> bool:
    """Whether Ray has started in `exp` (more than our files, written just before it). For a
    bucket, one listing of the prefix; a missing bucket or refused access is a TuneHandError
    here, before anything is written."""
    ours = (SPEC_FILE, SWEEP_FILE, LOCK_FILE)
    if is_remote(exp):
        return any(rel.split("/")[0] not in ours for rel in list_files(exp))
    path = Path(exp)
    return path.is_dir() and any(p.name not in ours and not p.name.startswith(f"{LOCK_FILE}.")
                                 for p in path.iterdir())


def check_restorable(exp: str) -> None:
    """Refuse (one line) to resume an experiment whose Ray state is missing or unreadable.

    Ray's `Tuner.restore` needs `tuner.pkl` and the newest `experiment_state-*.json`; without
    them a resubmitted search would start from scratch beside the old trials, and resume
    would fail deep inside Ray. The way out is a new experiment: `fork` reads the trials'
    own files (params.json, result.json, checkpoints), not Ray's state.
    """
    files = list_files(exp) if is_remote(exp) else {
        str(p.relative_to(exp)): 0 for p in Path(exp).glob("*") if p.is_file()} | {
        f"{p.parent.name}/{p.name}": 0 for p in Path(exp).glob("*/params.json")}
    top = {f for f in files if "/" not in f}
    trials = sorted({f.split("/")[0] for f in files if f.endswith("/params.json") and f.count("/") == 1})
    states = sorted(f for f in top if f.startswith("experiment_state-") and f.endswith(".json"))
    missing = [name for name, ok in (("tuner.pkl", "tuner.pkl" in top), ("experiment_state-*.json", bool(states)))
               if not ok]
    unreadable = ""
    if states and not missing:
        with open_dir(exp, lambda _: states[-1:]) as opened:
            data = read_json(opened.path / states[-1])
        if not isinstance(data, dict) or not isinstance(data.get("trial_data"), list):
            unreadable = states[-1]
    if not missing and not unreadable:
        return
    what = f"{unreadable} is unreadable" if unreadable else f"Ray's {' and '.join(missing)} " + (
        "is" if len(missing) == 1 else "are") + " missing"
    hint = (f"; its {len(trials)} trial directories are intact: `tune-hand fork {display(exp)} --name NEW` "
            "starts a new experiment from their results" if trials else "; nothing ran here yet: start it again "
            "with `tune-hand search`")
    raise TuneHandError(f"{display(exp)}: cannot resume: {what}{hint}")


NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]+")


def check_name(name: str, what: str = "--name") -> str:
    """An experiment name is one path segment, `[A-Za-z0-9._-]+`, neither `.` nor `..`."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name in (".", "..") or len(name) > 200:
        raise TuneHandError(f"{what} {name!r}: an experiment name is one path segment of letters, digits, "
                            "'.', '_' and '-' (not '.' or '..'), at most 200 characters")
    return name



def storage_path(storage: str | Path | None) -> str:
    storage = str(storage or DEFAULT_STORAGE)
    if is_remote(storage):
        return normalize(storage)
    return str(Path(storage.removeprefix("file://")).expanduser().resolve())


def exp_path(exp_dir: str | Path) -> str:
    """A local experiment's resolved directory (which must exist), or a bucket URI normalized;
    whether something is stored under the URI is checked when it is opened (one listing)."""
    exp = str(exp_dir)
    if is_remote(exp):
        return normalize(exp)
    path = Path(exp.removeprefix("file://")).expanduser().resolve()
    if not path.is_dir():
        raise TuneHandError(f"{path}: no such experiment directory")
    return str(path)


def _write_text(path: str, text: str) -> None:
    if is_remote(path):
        write_text(path, text)
        return
    from ..io import atomic_write

    os.chmod(atomic_write(Path(path.removeprefix("file://")), lambda f: f.write(text), mode="w"), 0o644)



def read_json(path: Path) -> Any:
    """A JSON file Ray or a trial wrote, or None when it is missing, torn or malformed."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None

