"""The training loop: checkpoints, resume, divergence, and (slow) that it learns."""

import json
import math

import numpy as np
import pytest
import torch

from tune_hand.checkpoint import load_checkpoint
from tune_hand.config import load_config
from tune_hand.errors import CheckpointError, TuneHandError
from tune_hand.evaluation import baseline_scores
from tune_hand.runs import run, start_run
from tune_hand.training import Trainer

TINY = ["optim.epochs=2", "optim.batch_size=8", "optim.milestones=[1]", "data.num_workers=0",
        "model.channels=8", "model.blocks=2", "data.val_fraction=0.25", "eval.batch_size=16"]


def tiny_config(*extra):
    return load_config("small", TINY + list(extra))


def test_run_writes_checkpoints_metrics_and_tensorboard(synth_data, tmp_path):
    out = tmp_path / "run"
    trainer = start_run(tiny_config(), synth_data, out)
    last = run(trainer, out)
    assert last.epoch == 2 and last.status == "ok"
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 2 and state["config"]["model"]["channels"] == 8
    assert (out / "best.pt").is_file() and (out / "config.yaml").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["pa_mpjpe_mm"]) and r["pa_mpjpe_mm"] > 0 for r in rows)
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tb").iterdir())
    # The learning rate followed MultiStepLR: milestone 1 multiplies by gamma after epoch 1.
    assert rows[1]["lr"] == pytest.approx(rows[0]["lr"] * 0.1)


def test_resume_continues_epochs_and_optimizer_exactly(synth_data, tmp_path):
    straight = tmp_path / "straight"
    run(start_run(tiny_config("optim.epochs=3"), synth_data, straight), straight)

    split = tmp_path / "split"
    run(start_run(tiny_config("optim.epochs=2"), synth_data, split), split)
    resumed = start_run(None, synth_data, split, resume=True, overrides=["optim.epochs=3"])
    assert resumed.epoch == 2
    steps_before = float(max(s["step"] for s in resumed.optimizer.state_dict()["state"].values()))
    run(resumed, split)

    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(split / "checkpoint.pt")
    assert b["epoch"] == 3
    steps_after = max(s["step"] for s in b["optimizer"]["state"].values())
    assert steps_after > steps_before  # Adam's moments carried on, not restarted
    assert [h["epoch"] for h in b["history"]] == [1, 2, 3]
    # Same weights as an uninterrupted run: data order, augmentation and RNG all resumed.
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key


def test_new_run_refuses_an_existing_run_dir(synth_data, tmp_path):
    out = tmp_path / "run"
    run(start_run(tiny_config("optim.epochs=1"), synth_data, out), out)
    with pytest.raises(TuneHandError, match="--resume"):
        start_run(tiny_config(), synth_data, out)


def test_resume_with_other_architecture_is_refused(synth_data, tmp_path):
    out = tmp_path / "run"
    run(start_run(tiny_config("optim.epochs=1"), synth_data, out), out)
    with pytest.raises(CheckpointError, match="model config differs"):
        start_run(None, synth_data, out, resume=True, overrides=["model.channels=16"])


def test_diverging_run_stops_at_once(synth_data, tmp_path):
    out = tmp_path / "run"
    trainer = start_run(tiny_config("optim.epochs=5", "optim.lr=1e30"), synth_data, out)
    results = list(trainer.epochs())
    assert results[-1].status == "diverged"
    assert len(results) < 5
    assert math.isnan(results[-1].val["pa_mpjpe_mm"])


@pytest.mark.slow
def test_small_config_learns_on_synthetic_hands(tmp_path):
    """A few minutes on CPU: the `small` preset (centroid-relative targets, the PA loss) learns the
    hand's articulation: its PA-MPJPE falls far below the camera-frame mean hand's, to the level
    of the mean hand SHAPE (the best constant after alignment), within ~11k training images.
    """
    from tune_hand.data.synthetic import render_dataset

    data = tmp_path / "data"
    render_dataset(data, n_train=400, n_eval=0, seed=3, with_mesh_files=False, workers=2)
    cfg = load_config("small", ["optim.epochs=8", "data.num_workers=1", "data.val_fraction=0.15"])
    trainer = Trainer(cfg, data)
    results = list(trainer.epochs())
    best_pa = min(r.val["pa_mpjpe_mm"] for r in results)
    gt_val = trainer.reader.xyz[np.unique(trainer.val_idx % trainer.reader.num_unique)] * 1000.0
    baselines = baseline_scores(trainer.train_xyz_m * 1000.0, gt_val)
    camera, shape = baselines["mean_hand_camera"], baselines["mean_hand_shape"]
    print(f"best val pa_mpjpe {best_pa:.1f} mm (camera-mean {camera['pa_mpjpe_mm']:.1f}, "
          f"mean shape {shape['pa_mpjpe_mm']:.1f})")
    assert results[-1].status == "ok"
    assert best_pa < 0.75 * camera["pa_mpjpe_mm"]
    assert best_pa < shape["pa_mpjpe_mm"] + 2.0


@pytest.mark.timeout(300)
def test_loader_workers_survive_a_render_in_the_same_process(tmp_path):
    """Regression: OpenCV's thread pool, used by the renderer in this process, deadlocked
    forked DataLoader workers (the demo hung at its first epoch)."""
    from tune_hand.data.synthetic import render_dataset

    data = tmp_path / "data"
    render_dataset(data, n_train=6, n_eval=0, seed=5, with_mesh_files=False)
    trainer = Trainer(tiny_config("optim.epochs=1", "data.num_workers=2", "data.val_fraction=0.2"), data)
    (result,) = list(trainer.epochs())
    assert result.status == "ok" and result.epoch == 1


def test_compile_option_wraps_the_training_model_only(synth_data):
    # torch.compile is lazy: building the wrapper is free, compiling happens at the first step
    # (about 2 minutes for this model on a 2-core CPU, hence no training here; the benchmark
    # bench_train_step.py --compile runs it).
    trainer = Trainer(tiny_config("train.compile=true"), synth_data)
    assert isinstance(trainer.step_model, torch._dynamo.eval_frame.OptimizedModule)
    assert trainer.step_model._orig_mod is trainer.model
    # Checkpoints hold the plain model's keys, loadable without compiling.
    plain = Trainer(tiny_config(), synth_data)
    assert trainer.state_dict()["model"].keys() == plain.state_dict()["model"].keys()
    assert plain.step_model is plain.model


def test_restore_takes_hyperparameters_from_the_given_config_and_state_from_the_checkpoint(synth_data, tmp_path):
    """A scheduler that changes a trial's learning rate between epochs (PBT) resumes it under the
    new value: Trainer.restore keeps the checkpoint's weights, moments and epoch, not its lr."""
    out = tmp_path / "run"
    run(start_run(tiny_config("optim.epochs=2", "optim.milestones=[1, 3]", "optim.lr=0.001"), synth_data, out), out)
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4)

    changed = Trainer(tiny_config("optim.epochs=4", "optim.milestones=[2, 3]", "optim.lr=0.004",
                                  "optim.weight_decay=0.01"), synth_data)
    changed.restore(state)
    group = changed.optimizer.param_groups[0]
    assert changed.epoch == 2 and group["lr"] == pytest.approx(0.004 * 0.1)  # milestone 2 passed, 3 not yet
    assert group["weight_decay"] == 0.01
    for key, tensor in state["model"].items():
        assert torch.equal(changed.model.state_dict()[key].cpu(), tensor), key
    next(changed.epochs())  # epoch 3: the new milestone 3 applies after it
    assert changed.optimizer.param_groups[0]["lr"] == pytest.approx(0.004 * 0.01)


def test_the_best_epoch_follows_the_objective_it_is_given(synth_data, tmp_path):
    """Training ranks its epochs by the sweep's metric and mode, not by a fixed PA-MPJPE."""
    from tune_hand.objective import Objective

    trainer = Trainer(tiny_config("optim.epochs=3"), synth_data, objective=Objective.single("rr_mpjpe_mm", "max"))
    results = list(trainer.epochs())
    values = [r.val["rr_mpjpe_mm"] for r in results]
    assert trainer.best_epoch == 1 + values.index(max(values))
    assert trainer.best_metric == max(values)
    assert [r.is_best for r in results].count(True) >= 1
