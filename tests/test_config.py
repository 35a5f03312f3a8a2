"""The typed config: YAML round-trip, --set overrides, validation with one-line errors."""

import pytest

from tune_hand.config import Config, apply_overrides, keys, load_config, preset_names
from tune_hand.errors import ConfigError

DESIGN_KEYS = [
    "model.encoder", "model.channels", "model.blocks", "model.separable", "model.kernel_size",
    "model.split_z", "model.target", "model.pretrained", "model.weights",
    "data.dir", "data.image_size", "data.val_fraction", "data.seed",
    "optim.lr", "optim.milestones", "optim.gamma", "optim.epochs", "optim.batch_size",
    "augment.rotation_deg", "augment.flip", "augment.color_jitter", "augment.scale", "augment.translate",
    "eval.tta_rotations",
]


def test_every_design_name_exists():
    assert set(DESIGN_KEYS) <= set(keys())


def test_defaults_are_the_papers_recipe():
    cfg = Config()
    assert (cfg.model.encoder, cfg.model.channels, cfg.model.blocks) == ("efficientnet-b4", 128, 4)
    assert (cfg.optim.lr, cfg.optim.milestones, cfg.optim.gamma) == (1e-4, [100, 140], 0.1)
    assert (cfg.optim.epochs, cfg.optim.batch_size) == (145, 32)
    assert cfg.heatmap_bins() == 112
    assert cfg.augment.rotation_deg == 180 and cfg.eval.tta_rotations == 10


def test_yaml_round_trip(tmp_path):
    cfg = apply_overrides(Config(), ["model.channels=64", "optim.milestones=[5, 9]", "data.dir=/data/frei"])
    cfg.to_yaml(tmp_path / "c.yaml")
    back = Config.from_yaml(tmp_path / "c.yaml")
    assert back == cfg and back.digest() == cfg.digest()


@pytest.mark.parametrize("override, key, value", [
    ("model.channels=64", "channels", 64),
    ("optim.lr=1e-3", "lr", 1e-3),
    ("optim.lr=0.01", "lr", 0.01),
    ("model.weights=null", "weights", None),
    ("model.split_z=false", "split_z", False),
])
def test_overrides_parse_yaml_values(override, key, value):
    cfg = apply_overrides(Config(), [override])
    section = override.split(".")[0]
    assert getattr(getattr(cfg, section), key) == value


def test_int_is_accepted_for_float_fields():
    assert apply_overrides(Config(), ["augment.rotation_deg=90"]).augment.rotation_deg == 90.0


@pytest.mark.parametrize("override, message", [
    ("model.channels=0", "model.channels=0"),
    ("model.nope=1", "unknown config key 'model.nope'"),
    ("nosection.x=1", "unknown config key 'nosection.x'"),
    ("optim.milestones=[10, 5]", "optim.milestones"),
    ("model.blocks=6", "model.blocks"),
    ("model.channels=abc", "expected an integer"),
    ("model.encoder=resnet50", "model.encoder"),
    ("data.image_size=100", "data.image_size"),
    ("augment.flip=1.5", "augment.flip"),
    ("model.channels", "expected section.key=value"),
])
def test_bad_values_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as err:
        apply_overrides(Config(), [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  chanels: 3\n")
    with pytest.raises(ConfigError, match="bad.yaml.*model.chanels"):
        Config.from_yaml(path)


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("model: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Config.from_yaml(path)


def test_presets_load_and_small_is_cpu_sized():
    assert {"paper", "small"} <= set(preset_names())
    small = load_config("small")
    assert small.model.pretrained is False and small.data.image_size <= 96
    assert load_config("paper") == Config()


def test_pretrained_with_width_override_is_refused():
    with pytest.raises(ConfigError, match="model.pretrained"):
        apply_overrides(Config(), ["model.width_coefficient=0.5"])


def test_missing_config_file_is_named():
    with pytest.raises(ConfigError, match="no-such.yaml"):
        load_config("no-such.yaml")
