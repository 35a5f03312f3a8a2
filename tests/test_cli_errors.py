"""Failures as a user meets them at the command line: one line, no traceback, the right exit code,
whatever the cause (ours, the file system, a closed pipe, a bug); TUNE_HAND_DEBUG=1 shows the traceback."""

import os
import subprocess
import sys

import pytest

from tune_hand.cli import one_line


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tune_hand", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def assert_one_line(proc, code: int, *names: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and 1 <= len(lines) <= 3, proc.stderr
    assert lines[-1].startswith("tune-hand: error:"), proc.stderr
    for name in names:
        assert name in proc.stderr, (name, proc.stderr)


def test_a_closed_pipe_ends_the_command_quietly(synth_data):
    """`tune-hand inspect DATA --json | head -1`: the reader is gone before we write."""
    proc = subprocess.Popen([sys.executable, "-m", "tune_hand", "inspect", str(synth_data), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert stderr == ""


def test_an_output_path_under_a_file_is_one_line(synth_data, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    proc = run_cli("evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(synth_data),
                   "--json", str(blocker / "metrics.json"))
    assert_one_line(proc, 2)
    proc = run_cli("synth", str(blocker / "data"), "--train", "2", "--eval", "1")
    assert_one_line(proc, 2, str(blocker))


def test_a_spec_that_is_not_utf8_is_one_line(tmp_path, synth_data):
    spec = tmp_path / "bad.yaml"
    spec.write_bytes(b"name: x\nbase: small\n\xff\xfe\x00garbage\n")
    proc = run_cli("search", str(spec), "--data", str(synth_data), "--storage", str(tmp_path / "s"))
    assert_one_line(proc, 2, "bad.yaml")
    assert not (tmp_path / "s").exists()  # nothing half-written


def test_tune_hand_debug_shows_the_traceback(tmp_path):
    proc = run_cli("status", str(tmp_path / "missing"), env={"TUNE_HAND_DEBUG": "1"})
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "tune-hand: error:" in proc.stderr


@pytest.mark.parametrize("error, expected", [
    (FileNotFoundError(2, "No such file or directory", "/x/y"), "/x/y: No such file or directory"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "not UTF-8 text (invalid start byte at byte 0)"),
    (RecursionError("maximum recursion depth exceeded"), "RecursionError: maximum recursion depth exceeded"),
])
def test_one_line_names_what_python_knows(error, expected):
    assert one_line(error).startswith(expected)


def test_one_line_is_capped():
    text = one_line(ValueError("x" * 5000))
    assert len(text) <= 300 and "\n" not in text


@pytest.mark.parametrize("name, text", [
    ("bomb.yaml", "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                  "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nname: bomb\n"),
    ("deep.yaml", "name: deep\nfixed: " + "[" * 200 + "]" * 200 + "\n"),
    ("torn.yaml", "name: torn\nspace: {optim.lr: {type: loguniform, low: 1.0e-4\n"),
])
def test_pathological_specs_are_one_line(tmp_path, synth_data, name, text):
    spec = tmp_path / name
    spec.write_text(text)
    proc = run_cli("search", str(spec), "--data", str(synth_data), "--storage", str(tmp_path / "s"))
    assert_one_line(proc, 2, name)
    assert not (tmp_path / "s").exists()
