"""The shipped `quick` spec (the demo's sweep): what it ranks by, what it searches, and what it must not."""

import pytest

from tune_hand.config import keys
from tune_hand.sweep import load_spec


@pytest.fixture(scope="module")
def quick():
    return load_spec("quick")


def test_it_ranks_trials_by_the_papers_score(quick):
    assert quick.metric == "pa_mpjpe_mm" and quick.mode == "min"


def test_it_searches_no_flip_no_camera_target_and_no_milestones(quick):
    searched = {p.key for p in quick.space}
    assert "augment.flip" not in searched and quick.base.augment.flip == 0.0
    if "model.target" in searched:
        assert "camera" not in quick.param("model.target").values
    assert quick.base.model.target == "centroid_relative"
    assert not searched & {"milestones.first", "milestones.second", "optim.milestones"}
    # No LR drop inside the budget: the base's milestones (none) are what every trial keeps.
    assert all(m >= quick.max_epochs for m in quick.base.optim.milestones)


def test_it_searches_the_pa_loss_weight_including_off(quick):
    weight = quick.param("optim.pa_loss_weight")
    assert 0.0 in weight.values and max(weight.values) > 0.0


def test_every_searched_key_is_a_config_key_and_rotation_stays_on(quick):
    known = set(keys())
    assert {p.key for p in quick.space} <= known
    # Rotation averaging at test time needs a model trained on every rotation.
    assert quick.base.augment.rotation_deg == 180.0 and quick.base.augment.rotation_prob == 1.0
    assert quick.base.eval.tta_rotations == 10


def test_it_stays_cpu_sized(quick):
    assert quick.base.model.encoder == "efficientnet-b0" and quick.base.data.image_size == 64
    assert quick.resources == {"gpu": 0, "cpu": 1} and quick.max_concurrent_trials == 2
    assert quick.scheduler.grace_period == 1 and quick.max_epochs <= 6 and 6 <= quick.num_samples <= 8
