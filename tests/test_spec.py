"""Sweep specs: validation errors, the shipped specs, define-by-run sampling, hashing. No Ray."""

import pickle

import optuna
import pytest
import yaml

from tune_hand.config import Config
from tune_hand.errors import ConfigError
from tune_hand.sweep import (define_by_run, load_spec, milestone_epochs, parse_spec, search_space, spec_hash,
                            spec_names, trial_config, with_overrides)

optuna.logging.set_verbosity(optuna.logging.WARNING)

GOOD = {
    "name": "t",
    "base": "small",
    "fixed": {"data.num_workers": 0},
    "space": {
        "optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
        "model.channels": {"type": "categorical", "values": [8, 16]},
        "model.blocks": {"type": "int", "low": 2, "high": 3},
        "augment.rotation_prob": {"type": "categorical", "values": [0.0, 1.0]},
        "augment.rotation_deg": {"type": "float", "low": 30, "high": 180, "step": 30,
                                 "when": {"augment.rotation_prob": 1.0}},
        "milestones.first": {"type": "float", "low": 0.3, "high": 0.7},
        "milestones.second": {"type": "float", "low": 0.5, "high": 0.9},
    },
    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2, "max_epochs": 10},
    "num_samples": 4,
    "resources": {"gpu": 0, "cpu": 1},
}


def write_spec(tmp_path, raw, name="bad.yaml"):
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False))
    return path


def edited(**changes):
    raw = yaml.safe_load(yaml.safe_dump(GOOD, sort_keys=False))
    for dotted, value in changes.items():
        *parents, last = dotted.split("/")
        node = raw
        for p in parents:
            node = node[p]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
    return raw


_DELETE = object()

BAD_SPECS = {
    "unknown top-level key": (edited(bogus=1), "bogus"),
    "wrong type": (edited(num_samples="many"), "num_samples"),
    "low > high": (edited(**{"space/optim.lr": {"type": "float", "low": 1e-2, "high": 1e-3}}), "space.optim.lr"),
    "parameter the Config lacks": (edited(**{"space/model.depth": {"type": "int", "low": 1, "high": 2}}),
                                   "model.depth"),
    "unknown section": (edited(**{"space/foo.bar": {"type": "int", "low": 1, "high": 2}}), "foo.bar"),
    "categorical value fails validate": (edited(**{"space/model.encoder": {"type": "categorical",
                                                                           "values": ["efficientnet-b9"]}}),
                                         "model.encoder"),
    "range end fails validate": (edited(**{"space/augment.rotation_deg": {"type": "float", "low": 0, "high": 270}}),
                                 "augment.rotation_deg"),
    "fixed value fails validate": (edited(**{"fixed/augment.translate": 0.9}), "augment.translate"),
    "fixed value wrong type": (edited(**{"fixed/model.channels": "wide"}), "model.channels"),
    "fixed unknown key": (edited(**{"fixed/model.wings": 2}), "model.wings"),
    "int range on a float field": (edited(**{"space/optim.lr": {"type": "int", "low": 1, "high": 2}}), "optim.lr"),
    "float range on a string field": (edited(**{"space/model.target": {"type": "float", "low": 0, "high": 1}}),
                                      "model.target"),
    "loguniform from zero": (edited(**{"space/optim.lr": {"type": "loguniform", "low": 0.0, "high": 1e-2}}),
                             "space.optim.lr"),
    "unknown parameter key": (edited(**{"space/optim.lr": {"type": "float", "low": 0.1, "high": 0.2, "mean": 1}}),
                              "space.optim.lr.mean"),
    "unknown parameter type": (edited(**{"space/optim.lr": {"type": "normal", "low": 0.1, "high": 0.2}}),
                               "space.optim.lr.type"),
    "categorical without values": (edited(**{"space/model.channels": {"type": "categorical"}}),
                                   "space.model.channels.values"),
    "categorical list value": (edited(**{"space/optim.milestones": {"type": "categorical", "values": [[1, 2]]}}),
                               "optim.milestones"),
    "condition on an unknown parameter": (edited(**{"space/augment.rotation_deg/when": {"augment.spin": True}}),
                                          "space.augment.rotation_deg.when"),
    "condition value not a choice": (edited(**{"space/augment.rotation_deg/when": {"augment.rotation_prob": 0.5}}),
                                     "space.augment.rotation_deg.when"),
    "milestone fraction out of range": (edited(**{"space/milestones.first": _DELETE, "space/milestones.second": _DELETE,
                                                  "fixed/milestones.first": 1.5, "fixed/milestones.second": 0.9}),
                                        "milestones.first"),
    "only one milestone": (edited(**{"space/milestones.second": _DELETE}), "milestones"),
    "epoch budget searched": (edited(**{"space/optim.epochs": {"type": "int", "low": 5, "high": 10}}),
                              "optim.epochs"),
    "grace period beyond the budget": (edited(**{"scheduler/grace_period": 20}), "scheduler.grace_period"),
    "unknown scheduler key": (edited(**{"scheduler/decay": 2}), "scheduler.decay"),
    "unknown scheduler": (edited(**{"scheduler/type": "bohb"}), "scheduler.type"),
    # Each scheduler type takes its own keys (tests/test_search_methods.py: the types themselves).
    "asha with brackets": (edited(**{"scheduler/brackets": 2}), "scheduler.brackets"),
    "median with a reduction factor": (edited(**{"scheduler/type": "median"}), "scheduler.reduction_factor"),
    "pbt with a grace period": (edited(**{"scheduler": {"type": "pbt", "grace_period": 1}}), "scheduler.grace_period"),
    "hyperband with more brackets than fit": (edited(**{"scheduler/type": "hyperband", "scheduler/brackets": 5}),
                                              "scheduler.brackets"),
    "hyperband with zero brackets": (edited(**{"scheduler/type": "hyperband", "scheduler/brackets": 0}),
                                     "scheduler.brackets"),
    "pbt quantile above a half": (edited(**{"scheduler": {"type": "pbt", "quantile": 0.6}}), "scheduler.quantile"),
    "pbt quantile zero": (edited(**{"scheduler": {"type": "pbt", "quantile": 0}}), "scheduler.quantile"),
    "pbt resample probability above 1": (edited(**{"scheduler": {"type": "pbt", "resample_probability": 1.5}}),
                                         "scheduler.resample_probability"),
    "pbt interval zero": (edited(**{"scheduler": {"type": "pbt", "perturbation_interval": 0}}),
                          "scheduler.perturbation_interval"),
    "pbt interval beyond the budget": (edited(**{"scheduler": {"type": "pbt", "perturbation_interval": 11,
                                                               "max_epochs": 10}}), "scheduler.perturbation_interval"),
    "pbt with tpe": (edited(sampler="tpe", **{"scheduler": {"type": "pbt"}}), "sampler"),
    "pbt with nothing to mutate": (edited(**{"scheduler": {"type": "pbt"}, "space": {
        "model.channels": {"type": "categorical", "values": [8, 16]}}}), "scheduler.type"),
    "pbt alone": (edited(num_samples=1, **{"scheduler": {"type": "pbt"}}), "num_samples"),
    "unknown sampler": (edited(sampler="hyperopt"), "sampler"),
    "cmaes on categoricals only": (edited(sampler="cmaes", space={
        "model.channels": {"type": "categorical", "values": [8, 16]}}), "sampler"),
    "reduction factor 1": (edited(**{"scheduler/reduction_factor": 1}), "scheduler.reduction_factor"),
    "unknown resource": (edited(**{"resources/tpu": 1}), "resources.tpu"),
    "negative cpus": (edited(**{"resources/cpu": -1}), "resources.cpu"),
    "bad mode": (edited(mode="maximize"), "mode"),
    "unknown metric": (edited(metric="accuracy"), "metric"),
    "unknown base preset": (edited(base="huge"), "base"),
    "searched and fixed": (edited(**{"fixed/optim.lr": 1e-3}), "optim.lr"),
    "no validation split": (edited(**{"fixed/data.val_fraction": 0.0}), "data.val_fraction"),
    "data.dir fixed": (edited(**{"fixed/data.dir": "/data"}), "data.dir"),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_bad_spec_is_a_one_line_error_naming_file_and_key(tmp_path, case):
    raw, key = BAD_SPECS[case]
    path = write_spec(tmp_path, raw)
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message, message
    assert key in message, message


def test_the_good_spec_loads(tmp_path):
    spec = load_spec(write_spec(tmp_path, GOOD, "good.yaml"))
    assert [p.key for p in spec.space][:2] == ["optim.lr", "model.channels"]
    assert spec.max_epochs == 10 and spec.metric == "pa_mpjpe_mm" and spec.mode == "min"


def test_not_yaml_and_missing_file(tmp_path):
    path = write_spec(tmp_path, "space: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_spec(path)
    with pytest.raises(ConfigError, match="shipped: paper, quick"):
        load_spec(tmp_path / "absent.yaml")


def test_base_may_be_a_config_file_beside_the_spec(tmp_path):
    Config().to_yaml(tmp_path / "mybase.yaml")
    raw = edited(base="mybase.yaml")
    raw["fixed"]["model.pretrained"] = False
    spec = load_spec(write_spec(tmp_path, raw, "s.yaml"))
    assert spec.base.model.encoder == "efficientnet-b4"


@pytest.mark.parametrize("name", ["paper", "quick"])
def test_shipped_specs_load_and_their_trials_validate(name):
    assert name in spec_names()
    spec = load_spec(name)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=0))
    for i in range(20):
        trial = study.ask()
        fixed = define_by_run(trial, spec)
        assert fixed == spec.fixed
        cfg = trial_config(spec, {**fixed, **trial.params})
        ms = cfg.optim.milestones
        if name == "paper":  # the two searched milestone fractions, inside the budget
            assert len(ms) == 2 and 1 <= ms[0] < ms[1] and ms[0] <= spec.max_epochs
            # Conditional parameters are sampled exactly when their switch is on.
            assert ("augment.rotation_deg" in trial.params) == (trial.params["augment.rotation_prob"] == 1.0)
            if trial.params["augment.rotation_prob"] == 0.0:
                assert cfg.augment.rotation_deg == spec.base.augment.rotation_deg
        else:  # quick: a constant learning rate (a drop during the descent cost ~1.5 mm)
            assert ms == [] and cfg.model.target == "centroid_relative" and cfg.augment.flip == 0.0
        assert cfg.optim.epochs == spec.max_epochs
        study.tell(trial, float(i))


def test_paper_spec_is_the_papers_recipe():
    spec = load_spec("paper")
    cfg = trial_config(spec, {"milestones.first": 100 / 145, "milestones.second": 140 / 145})
    assert (cfg.model.encoder, cfg.model.pretrained, cfg.optim.epochs, cfg.optim.batch_size) == \
        ("efficientnet-b4", True, 145, 32)
    assert cfg.optim.milestones == [100, 140]
    assert spec.resources["gpu"] == 1 and spec.scheduler.type == "asha"
    assert spec.scheduler.grace_period == 10 and spec.scheduler.reduction_factor == 3
    channels = spec.param("model.channels")
    assert 128 in channels.values and spec.param("model.blocks").low <= 4 <= spec.param("model.blocks").high
    lr = spec.param("optim.lr")
    assert (lr.type, lr.low, lr.high) == ("loguniform", 1e-5, 1e-3)


def test_quick_spec_is_cpu_sized():
    spec = load_spec("quick")
    assert spec.base.model.encoder == "efficientnet-b0" and spec.base.data.image_size == 64
    assert spec.resources == {"gpu": 0, "cpu": 1} and spec.max_concurrent_trials == 2
    assert spec.max_epochs <= 6 and 6 <= spec.num_samples <= 8


@pytest.mark.parametrize("first, second, epochs, expected", [
    (0.69, 0.97, 145, [100, 141]),
    (0.9, 0.5, 10, [5, 9]),           # given in either order
    (0.5, 0.52, 4, [2, 3]),           # same epoch: the second moves one later
    (0.01, 0.02, 10, [1, 2]),         # never epoch 0
    (0.99, 0.995, 4, [4, 5]),         # at the end: the second never fires, still valid
])
def test_milestone_fractions_map_to_increasing_epochs(first, second, epochs, expected):
    assert milestone_epochs(first, second, epochs) == expected


def test_trial_config_rejects_parameters_outside_the_space(tmp_path):
    spec = load_spec(write_spec(tmp_path, GOOD, "good.yaml"))
    with pytest.raises(ConfigError, match="model.kernel_size"):
        trial_config(spec, {"model.kernel_size": 3})


def test_spec_hash_is_stable_and_content_based(tmp_path):
    a = load_spec(write_spec(tmp_path, GOOD, "a.yaml"))
    reordered = dict(GOOD, fixed={"data.num_workers": 0}, scheduler=dict(reversed(list(GOOD["scheduler"].items()))))
    b = load_spec(write_spec(tmp_path, reordered, "b.yaml"))
    assert spec_hash(a) == spec_hash(b) == spec_hash(load_spec(tmp_path / "a.yaml"))
    c = load_spec(write_spec(tmp_path, edited(num_samples=5), "c.yaml"))
    assert spec_hash(c) != spec_hash(a)
    # The stored, base-inlined form hashes the same as the file it came from.
    assert spec_hash(parse_spec(yaml.safe_load(a.to_yaml()))) == spec_hash(a)


def test_sweeps_stored_before_newer_config_keys_keep_their_hash(tmp_path):
    """A sweep stored by an older tune-hand lacks config keys added since; it must still resume."""
    from tune_hand.config import ADDED_KEYS
    from tune_hand.sweep import spec_diff
    spec = load_spec(write_spec(tmp_path, GOOD, "a.yaml"))
    old = yaml.safe_load(spec.to_yaml())
    for dotted, neutral in ADDED_KEYS.items():  # an older tune-hand stored none of these (all at neutral)
        section, key = dotted.split(".")
        if old["base"][section][key] == neutral:
            del old["base"][section][key]
    reread = parse_spec(old)  # what resume reads: missing keys filled with their defaults
    assert spec_hash(reread) == spec_hash(spec)
    assert spec_diff(old, spec.to_dict()) == []
    cached = with_overrides(spec, ["data.device_warp=true"])
    assert spec_hash(cached) != spec_hash(spec)
    assert spec_diff(old, cached.to_dict()) == ["fixed.data.device_warp: (none) -> True"]
    # Each listed neutral value is the default, so a new spec that leaves the key alone matches.
    from tune_hand.config import Config
    defaults = Config().to_dict()
    assert all(defaults[k.split(".")[0]][k.split(".")[1]] == v for k, v in ADDED_KEYS.items())


# The config keys of the first stored sweeps (the spec format of 2026-11-26).
FIRST_SWEEP_KEYS = {
    "augment.color_jitter", "augment.color_jitter_prob", "augment.flip", "augment.rotation_deg",
    "augment.rotation_prob", "augment.scale", "augment.scale_prob", "augment.translate",
    "augment.translate_prob", "data.dir", "data.image_size", "data.num_workers", "data.range_margin",
    "data.seed", "data.val_fraction", "eval.batch_size", "eval.tta_rotations", "model.blocks",
    "model.channels", "model.depth_coefficient", "model.encoder", "model.encoder_bn_momentum",
    "model.kernel_size", "model.normalize", "model.pretrained", "model.separable",
    "model.separable_order", "model.split_z", "model.target", "model.weights", "model.width_coefficient",
    "optim.batch_size", "optim.epochs", "optim.gamma", "optim.lr", "optim.milestones",
    "optim.weight_decay", "train.amp", "train.channels_last", "train.device", "train.log_every",
    "train.seed", "train.threads",
}


def test_every_config_key_added_since_the_first_sweeps_is_listed_with_its_neutral_value():
    """A new config key missing from ADDED_KEYS would make every stored sweep refuse to resume."""
    from tune_hand.config import ADDED_KEYS, Config
    keys = {f"{section}.{key}" for section, values in Config().to_dict().items() for key in values}
    assert keys - FIRST_SWEEP_KEYS == set(ADDED_KEYS)


def test_overrides_pin_searched_keys_and_resolve_conditions(tmp_path):
    spec = load_spec(write_spec(tmp_path, GOOD, "good.yaml"))
    pinned = with_overrides(spec, ["model.channels=8", "augment.rotation_prob=0.0", "optim.epochs=3"], samples=2)
    keys = [p.key for p in pinned.space]
    assert "model.channels" not in keys and "augment.rotation_deg" not in keys  # its switch is pinned off
    assert pinned.fixed["model.channels"] == 8 and pinned.max_epochs == 3 and pinned.num_samples == 2
    on = with_overrides(spec, ["augment.rotation_prob=1.0"])
    assert on.param("augment.rotation_deg").when == ()  # its switch is pinned on: always sampled
    with pytest.raises(ConfigError, match="model.channels"):
        with_overrides(spec, ["model.channels=0"])


def test_define_by_run_is_picklable_by_reference(tmp_path):
    spec = load_spec(write_spec(tmp_path, GOOD, "good.yaml"))
    fn = pickle.loads(pickle.dumps(search_space(spec)))
    trial = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=1)).ask()
    assert fn(trial) == spec.fixed and "optim.lr" in trial.params
