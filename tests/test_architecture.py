"""The house rules a test can hold: import direction, Ray at the edge, no circles, file sizes,
and the module paths that sweeps written by earlier layouts pickled."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 450


def test_import_contracts_hold():
    """import-linter's contracts in pyproject.toml: layers (cli -> sweep -> training -> model/data,
    and inside the sweep), Ray only in the sweep's driver/schedulers/searcher/live table, the
    trainables and the jobs client, and no import circle at any depth."""
    proc = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                           "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize("package", ["tune_hand", "trainables"])
def test_no_library_file_is_over_450_lines(package):
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / package).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by idea: {long}"


# Names that Ray pickled by reference in sweeps written before tune_hand.sweep was a package
# (tuner.pkl, searcher and callback state): each must still resolve to the class or function
# that does that job now.
OLD_NAMES = {
    "tune_hand.search_alg.ResumableASHA": "tune_hand.sweep.schedulers.ResumableASHA",
    "tune_hand.search_alg.AshaStateCallback": "tune_hand.sweep.schedulers.AshaStateCallback",
    "tune_hand.search_alg.TrialStateOptunaSearch": "tune_hand.sweep.searcher.TrialStateOptunaSearch",
    "tune_hand.search_alg.LiveTable": "tune_hand.sweep.live_table.LiveTable",
    "tune_hand.spec.define_by_run": "tune_hand.sweep.space.define_by_run",
    "tune_hand.spec.Spec": "tune_hand.sweep.spec.Spec",
    "tune_hand.spec.Param": "tune_hand.sweep.spec.Param",
    "tune_hand.spec.Scheduler": "tune_hand.sweep.spec.Scheduler",
    "tune_hand.sweep.trial_dirname": "tune_hand.sweep.driver.trial_dirname",
    "trainables.hand_pose.train_hand_pose": "trainables.hand_pose.train_hand_pose",
    "tune_hand.config.Config": "tune_hand.config.Config",
}


def _resolve(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("old", sorted(OLD_NAMES))
def test_names_pickled_by_older_sweeps_still_resolve(old):
    assert _resolve(old) is _resolve(OLD_NAMES[old])


def test_the_readers_import_without_ray():
    """`status`, `best` and `report` run on a machine without a Ray cluster: their modules never
    import Ray, even indirectly."""
    code = ("import sys; import tune_hand.cli, tune_hand.sweep.results, tune_hand.report, tune_hand.retrain; "
            "from tune_hand.sweep import load_status, export_best; "
            "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
