"""What a person looks at: the sweep report (HTML + PNGs, checked in a real headless browser) and
the TensorBoard images every trial writes.

The browser check needs Debian's chromium (`apt-get install chromium`; `.ci/run` installs it).
Without it the check is skipped, except where TUNE_HAND_REQUIRE_BROWSER=1 (CI) makes that a failure.
"""

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from tune_hand.sweep import load_status

pytestmark = pytest.mark.slow

FIGURES = {"history.png", "parallel.png", "importances.png", "asha.png", "best_curve.png", "predictions.png",
           "tta.png"}


@pytest.fixture(scope="module")
def retrained(sweep, tiny_data, tmp_path_factory):
    from tune_hand.retrain import retrain

    out = tmp_path_factory.mktemp("final") / "final"
    retrain(sweep[0], tiny_data, out, epochs=1, tta=4, overrides=["train.threads=1"], progress=lambda line: None)
    return out


@pytest.fixture(scope="module")
def report(sweep, retrained, tiny_data, tmp_path_factory):
    """`build_report` in a fresh interpreter, which must never import Ray (storage alone)."""
    out = tmp_path_factory.mktemp("report") / "report"
    code = ("import sys, json; from tune_hand.report import build_report; "
            f"r = build_report({str(sweep[0])!r}, {str(out)!r}, retrain_dir={str(retrained)!r}, "
            f"data_dir={str(tiny_data)!r}, images=4); "
            "assert 'ray' not in sys.modules, 'the report imported ray'; print(json.dumps(r))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


def test_report_writes_every_figure_as_a_real_image(report):
    out, info = report
    assert set(info["figures"]) == FIGURES and info["missing"] == {}
    for name in FIGURES:
        image = cv2.imread(str(out / name))
        assert image is not None, name
        h, w = image.shape[:2]
        assert 150 <= h <= 3000 and 300 <= w <= 3000, (name, image.shape)
        assert image.std() > 5, f"{name} is blank"


def test_report_page_embeds_the_figures_and_lists_every_trial_with_its_state(report, sweep):
    out, _ = report
    page = (out / "index.html").read_text()
    assert "http://" not in page and "https://" not in page  # nothing to fetch: views offline
    embedded = re.findall(r"src='data:image/png;base64,[^']+' alt='[^']*' data-file='([^']+)'", page)
    assert set(embedded) == FIGURES
    status = load_status(sweep[0])
    rows = re.findall(r"<tr><td>([0-9a-f]{8})</td><td><span class='state'[^>]*>([^<]+)</span>", page)
    assert sorted(rows) == sorted((t["trial_id"], t["state"]) for t in status["trials"])
    assert f"<b>{status['best']['trial_id']}</b>" in page


def _chromium() -> str | None:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("TUNE_HAND_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not installed; `apt-get install chromium` (CI requires the browser check)")
        pytest.skip("chromium is not installed (`apt-get install chromium` to check the report in a browser)")
    return path


def _headless(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000"]
    return subprocess.run([chromium, *flags, *args], capture_output=True, text=True, timeout=120)


def test_report_loads_cleanly_in_a_headless_browser(report, tmp_path):
    chromium = _chromium()
    out, _ = report
    url = (out / "index.html").as_uri()
    dom = _headless(chromium, tmp_path / "p1", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout).group(0)
    assert f'data-images="{len(FIGURES)}/{len(FIGURES)}"' in body, body  # every image decoded and shown
    assert 'data-errors="0"' in body, body
    console = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln]
    assert not [ln for ln in console if "rror" in ln or "Uncaught" in ln], console

    shot = tmp_path / "report.png"
    proc = _headless(chromium, tmp_path / "p2", f"--screenshot={shot}", "--window-size=1200,2400", url)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    image = cv2.imread(str(shot))
    assert image.shape[:2] == (2400, 1200) and image.std() > 10  # a rendered page, not a blank one
    if os.environ.get("TUNE_HAND_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["TUNE_HAND_SCREENSHOT"])


def _tb_images(directory: Path) -> set[tuple[str, int]]:
    """(tag, step) of every image summary in the tensorboardX event files of `directory`."""
    from tensorboardX.proto import event_pb2

    found = set()
    for path in directory.glob("events.out.tfevents.*"):
        data, pos = path.read_bytes(), 0
        while pos + 12 <= len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            found |= {(v.tag, event.step) for v in event.summary.value if v.HasField("image")}
    return found


def test_every_trial_writes_prediction_and_heatmap_images_to_tensorboard(sweep):
    exp, _ = sweep
    status = load_status(exp)
    for t in status["trials"]:
        images = _tb_images(exp / t["dir"])
        assert {("val/predictions", 1), ("val/heatmaps", 1)} <= images, (t["trial_id"], images)
        if t["state"] == "finished":  # and at the last epoch
            assert ("val/predictions", t["epochs"]) in images


def test_a_training_run_logs_the_same_images(synth_data, tmp_path):
    from tune_hand.config import load_config
    from tune_hand.runs import run, start_run

    cfg = load_config("small", ["model.channels=8", "model.blocks=2", "optim.epochs=2", "optim.milestones=[1, 2]",
                                "data.num_workers=0", "train.image_every=2"])
    run(start_run(cfg, synth_data, tmp_path / "run"), tmp_path / "run")
    assert _tb_images(tmp_path / "run" / "tb") == {("val/predictions", 1), ("val/heatmaps", 1),
                                                   ("val/predictions", 2), ("val/heatmaps", 2)}
