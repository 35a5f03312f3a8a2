"""The one typed config that flows from sweep spec to trial to checkpoint.

Sections and field names are a contract (DESIGN section 6): specs, tests and tools use
them as `section.key`. The defaults are the paper's model and recipe; `preset("small")`
is the CPU-sized config the demo and tests start from.

    cfg = Config.from_yaml("run.yaml")
    cfg = apply_overrides(cfg, ["model.channels=64", "optim.milestones=[10, 14]"])
    cfg.to_yaml("run.yaml")
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

ENCODERS = tuple(f"efficientnet-b{i}" for i in range(8))
TARGETS = ("camera", "root_relative", "centroid_relative")
NORMALIZE = ("imagenet", "none")
SEPARABLE_ORDERS = ("depthwise_first", "pointwise_first")


@dataclass
class ModelConfig:
    encoder: str = "efficientnet-b4"
    channels: int = 128  # C: decoder width
    blocks: int = 4  # N: up-sampling blocks; H = (image_size / 32) * 2**N heatmap bins
    separable: bool = True  # blocks 1..N-1 as depthwise transposed conv + 1x1 (the paper's)
    # Where the 1x1 runs in a separable block: after up-sampling (the authors' code) or
    # before it, at the lower resolution (same parameters, ~2.7x fewer decoder MACs).
    separable_order: str = "depthwise_first"
    kernel_size: int = 4  # 4: k4 s2 p1 (the authors' code); 3: k3 s2 p1 output_padding 1 (paper text)
    split_z: bool = True  # separate z stack (the paper); False shares the xy features for z
    # camera: the paper's absolute points; root_relative: minus the wrist; centroid_relative: minus
    # the mean of the 21 joints (~1/4 the variance of root_relative: learns articulation ~2x faster)
    target: str = "camera"
    pretrained: bool = True  # ImageNet weights (from `weights` or the torch hub cache)
    weights: str | None = None  # local efficientnet-pytorch .pth file
    normalize: str = "imagenet"  # input normalisation; "none" feeds [0, 1] like the authors
    # PyTorch-convention BatchNorm momentum for the encoder. efficientnet-pytorch's default
    # (TF-style 0.99) is 0.01 here; short CPU runs need ~0.1 or eval outputs stay constant.
    encoder_bn_momentum: float = 0.01
    width_coefficient: float | None = None  # override the variant's width (random init only)
    depth_coefficient: float | None = None  # override the variant's depth (random init only)


@dataclass
class DataConfig:
    dir: str | None = None
    image_size: int = 224
    val_fraction: float = 0.1
    seed: int = 0  # the train/validation split's seed
    range_margin: float = 0.1  # heatmap range = training min/max widened by this fraction of the span
    num_workers: int = 2
    # Decoded-image cache (tune_hand/data/cache.py): "" off; "auto" node-local temp dir; else a directory.
    cache: str = ""
    # Augment batched on the training device (dataset.warp_batch), not per item in the loader: for GPUs only
    # (on a CPU, torch warps ~320 images/s per core; the whole per-item OpenCV path does ~1,300).
    device_warp: bool = False


@dataclass
class OptimConfig:
    lr: float = 1e-4
    milestones: list[int] = field(default_factory=lambda: [100, 140])  # epochs
    gamma: float = 0.1
    epochs: int = 145
    batch_size: int = 32
    weight_decay: float = 0.0
    # Weight of an auxiliary loss on the Procrustes-aligned squared error (losses.pa_loss, mm^2 like
    # the MSE); 0 = off, the paper's plain MSE.
    pa_loss_weight: float = 0.0


@dataclass
class AugmentConfig:
    """Each geometric operation has a magnitude and a probability of being applied."""

    rotation_deg: float = 180.0  # uniform in [-rotation_deg, rotation_deg] about the optical axis
    rotation_prob: float = 1.0
    flip: float = 0.0  # probability of a horizontal flip
    color_jitter: float = 0.0  # strength in [0, 1]: brightness/contrast/saturation +-x, hue +-x/10
    color_jitter_prob: float = 1.0
    scale: float = 0.0  # zoom factor uniform in [1 - scale, 1 + scale]
    scale_prob: float = 1.0
    translate: float = 0.0  # shift uniform in +-translate * image_size per axis
    translate_prob: float = 1.0


@dataclass
class EvalConfig:
    tta_rotations: int = 10  # rotation averaging at test time; 1 = plain prediction
    batch_size: int = 64


@dataclass
class TrainConfig:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # autocast (bf16 where supported) on CUDA; ignored on CPU
    channels_last: bool = True
    compile: bool = False  # torch.compile the training step's model (minutes of compiling first)
    threads: int = 0  # torch CPU threads; 0 = leave torch's default
    log_every: int = 0  # print every N steps in the CLI progress line; 0 = per epoch only
    image_every: int = 5  # TensorBoard prediction/heatmap images at epoch 1, every N epochs and the last; 0 = off


# Keys added after sweeps were first stored, each with the value that behaves as before it
# existed. A stored sweep's spec lacks them; spec hashes leave them out at these values, so an
# older sweep still resumes. Add every new config key here, at its neutral default.
ADDED_KEYS: dict[str, Any] = {
    "train.image_every": 5,
    "train.compile": False,
    "data.cache": "",
    "data.device_warp": False,
    "optim.pa_loss_weight": 0.0,
}


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # -- serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, source: str = "config") -> "Config":
        """Build and validate a config; unknown sections or keys are errors."""
        cfg = cls()
        if data is None:
            return cfg.validate()
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
        for section, values in data.items():
            if section not in _SECTION_TYPES:
                raise ConfigError(f"{source}: unknown section '{section}' (known: {', '.join(_SECTION_TYPES)})")
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: section '{section}' must be a mapping")
            for key, value in values.items():
                _set(cfg, f"{section}.{key}", value, source)
        return cfg.validate()

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            from .io import atomic_write

            atomic_write(path, lambda f: f.write(text), mode="w")
        return text

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Config":
        from .io import read_yaml

        return cls.from_dict(read_yaml(path, "config"), source=str(path))

    def copy(self) -> "Config":
        return copy.deepcopy(self)

    def digest(self) -> str:
        """A short stable hash of every field, for provenance and change detection."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    # -- validation ------------------------------------------------------------------
    def heatmap_bins(self) -> int:
        return (self.data.image_size // 32) * 2**self.model.blocks

    def validate(self) -> "Config":
        m, d, o, a, e, t = self.model, self.data, self.optim, self.augment, self.eval, self.train
        for key, value in _absurd_numbers(self):  # NaN, inf and 1e300 anywhere, before the range checks below
            _check(False, key, value, f"a finite number within float32's range (|x| <= {_LARGEST:.3g})")
        _check(m.encoder in ENCODERS, "model.encoder", m.encoder, f"one of {', '.join(ENCODERS)}")
        _check(1 <= m.channels <= 4096, "model.channels", m.channels, "in 1..4096")
        _check(m.kernel_size in (3, 4), "model.kernel_size", m.kernel_size, "3 or 4")
        _check(m.target in TARGETS, "model.target", m.target, f"one of {', '.join(TARGETS)}")
        _check(m.normalize in NORMALIZE, "model.normalize", m.normalize, f"one of {', '.join(NORMALIZE)}")
        _check(m.separable_order in SEPARABLE_ORDERS, "model.separable_order", m.separable_order,
               f"one of {', '.join(SEPARABLE_ORDERS)}")
        _check(0.0 < m.encoder_bn_momentum <= 1.0, "model.encoder_bn_momentum", m.encoder_bn_momentum, "in (0, 1]")
        for name in ("width_coefficient", "depth_coefficient"):
            value = getattr(m, name)
            _check(value is None or 0 < value <= 8, f"model.{name}", value, "in (0, 8] or null")
        if m.pretrained and (m.width_coefficient is not None or m.depth_coefficient is not None):
            raise ConfigError("model.pretrained: ImageNet weights exist only for the stock variants; "
                              "set model.pretrained=false to use width/depth_coefficient")
        _check(32 <= d.image_size <= 2048 and d.image_size % 32 == 0, "data.image_size", d.image_size,
               "a positive multiple of 32, at most 2048")
        max_blocks = 5  # H = (S/32) * 2**N may not exceed the image size S
        _check(1 <= m.blocks <= max_blocks, "model.blocks", m.blocks,
               f"in 1..{max_blocks} for data.image_size={d.image_size} (heatmap bins may not exceed the image size)")
        _check(0.0 <= d.val_fraction < 1.0, "data.val_fraction", d.val_fraction, "in [0, 1)")
        _check(0.0 <= d.range_margin <= 1.0, "data.range_margin", d.range_margin,
               "in [0, 1] (a fraction of the training span added on each side)")
        _check(0 <= d.num_workers <= 256, "data.num_workers", d.num_workers, "in 0..256")
        _check(0 <= d.seed <= _MAX_SEED, "data.seed", d.seed, f"in 0..{_MAX_SEED} (numpy's seed range)")
        _check(o.lr > 0, "optim.lr", o.lr, "positive")
        _check(0 < o.gamma <= 1, "optim.gamma", o.gamma, "in (0, 1]")
        _check(1 <= o.epochs <= _MAX_EPOCHS, "optim.epochs", o.epochs, f"in 1..{_MAX_EPOCHS}")
        _check(1 <= o.batch_size <= _MAX_BATCH, "optim.batch_size", o.batch_size, f"in 1..{_MAX_BATCH}")
        _check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "non-negative")
        _check(0 <= o.pa_loss_weight < float("inf"), "optim.pa_loss_weight", o.pa_loss_weight,
               "a finite non-negative weight (0 = off)")
        ms = list(o.milestones)
        _check(all(1 <= x <= _MAX_EPOCHS for x in ms) and all(b > a_ for a_, b in zip(ms, ms[1:])),
               "optim.milestones", ms, f"strictly increasing epochs in 1..{_MAX_EPOCHS}")
        _check(a.rotation_deg >= 0 and a.rotation_deg <= 180, "augment.rotation_deg", a.rotation_deg, "in [0, 180]")
        _check(0 <= a.color_jitter <= 1, "augment.color_jitter", a.color_jitter, "in [0, 1]")
        _check(0 <= a.scale < 1, "augment.scale", a.scale, "in [0, 1)")
        _check(0 <= a.translate <= 0.5, "augment.translate", a.translate, "in [0, 0.5]")
        for name in ("rotation_prob", "flip", "color_jitter_prob", "scale_prob", "translate_prob"):
            value = getattr(a, name)
            _check(0 <= value <= 1, f"augment.{name}", value, "a probability in [0, 1]")
        _check(1 <= e.tta_rotations <= 360, "eval.tta_rotations", e.tta_rotations, "in 1..360")
        _check(1 <= e.batch_size <= _MAX_BATCH, "eval.batch_size", e.batch_size, f"in 1..{_MAX_BATCH}")
        _check(t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"), "train.device", t.device,
               "auto, cpu, cuda or cuda:N")
        _check(0 <= t.seed <= _MAX_SEED, "train.seed", t.seed, f"in 0..{_MAX_SEED} (numpy's seed range)")
        _check(0 <= t.threads <= 1024, "train.threads", t.threads, "in 0..1024")
        _check(t.log_every >= 0, "train.log_every", t.log_every, "non-negative")
        _check(t.image_every >= 0, "train.image_every", t.image_every, "non-negative")
        return self


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: must be {expected}")


# Bounds no real run comes near; past them a value is a typo or an attack, refused before anything starts.
# Any number anywhere must be finite and fit a float32 (1e300 would be inf in every tensor it reaches); a
# huge but finite learning rate stays allowed: it is how the tests make a run diverge on purpose.
_LARGEST = 3.4028234663852886e38  # float32's largest
_MAX_SEED = 2**32 - 1  # np.random.seed accepts 0..2**32-1; the seeds go to numpy and torch
_MAX_EPOCHS = 100_000
_MAX_BATCH = 65_536


def _absurd_numbers(cfg: Config) -> typing.Iterator[tuple[str, Any]]:
    """(section.key, value) for every number in `cfg` that is NaN, infinite or over _LARGEST in magnitude
    (for a list, the whole list)."""
    for section, values in cfg.to_dict().items():
        for name, value in values.items():
            items = value if isinstance(value, list) else [value]
            bad = [v for v in items if isinstance(v, (int, float)) and not isinstance(v, bool) and not abs(v) <= _LARGEST]
            if bad:
                yield f"{section}.{name}", value if isinstance(value, list) else bad[0]


_SECTION_TYPES = {
    "model": ModelConfig, "data": DataConfig, "optim": OptimConfig,
    "augment": AugmentConfig, "eval": EvalConfig, "train": TrainConfig,
}


def field_type(key: str) -> Any:
    """The declared type of `section.key`; a ConfigError for an unknown key."""
    section, _, name = key.partition(".")
    if section not in _SECTION_TYPES or not name:
        raise ConfigError(f"unknown config key '{key}' (sections: {', '.join(_SECTION_TYPES)})")
    hints = typing.get_type_hints(_SECTION_TYPES[section])
    if name not in hints:
        raise ConfigError(f"unknown config key '{key}' (keys of {section}: {', '.join(hints)})")
    return hints[name]


def keys() -> list[str]:
    """Every `section.key` name."""
    return [f"{s}.{n}" for s, cls in _SECTION_TYPES.items() for n in typing.get_type_hints(cls)]


def coerce(key: str, value: Any, source: str = "config") -> Any:
    """Check `value` against the declared type of `key`, converting int -> float where declared."""
    try:
        tp = field_type(key)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    ok, out = _coerce(tp, value)
    if not ok:
        raise ConfigError(f"{source}: {key}={value!r}: expected {_type_name(tp)}")
    return out


def _coerce(tp: Any, value: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for arg in typing.get_args(tp):
            ok, out = _coerce(arg, value)
            if ok:
                return True, out
        return False, None
    if tp is type(None):
        return value is None, None
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            return False, None
        out = []
        for v in value:
            ok, c = _coerce(item, v)
            if not ok:
                return False, None
            out.append(c)
        return True, out
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, None
    if tp is str:
        return isinstance(value, str), value
    return False, None


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if typing.get_args(tp) and type(None) in typing.get_args(tp):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{_type_name(inner[0])} or null"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _set(cfg: Config, key: str, value: Any, source: str) -> None:
    section, _, name = key.partition(".")
    setattr(getattr(cfg, section), name, coerce(key, value, source))


def get(cfg: Config, key: str) -> Any:
    field_type(key)
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section), name)


def with_values(cfg: Config, values: dict[str, Any], source: str = "config") -> Config:
    """A validated copy of `cfg` with `{"section.key": value}` applied."""
    out = cfg.copy()
    for key, value in values.items():
        _set(out, key, value, source)
    return out.validate()


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one `section.key=value` (value in YAML syntax: 64, 1e-3, true, [10, 14], null)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    field_type(key)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    tp = field_type(key)
    if isinstance(value, str) and (tp is float or float in typing.get_args(tp)):
        try:  # YAML 1.1 reads "1e-3" as a string
            value = float(value)
        except ValueError:
            pass
    return key, value


def apply_overrides(cfg: Config, overrides: list[str] | None) -> Config:
    """A validated copy of `cfg` with `--set section.key=value` strings applied in order."""
    values = dict(parse_override(o) for o in overrides or [])
    return with_values(cfg, values, source="--set")


PRESETS_DIR = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_config(path_or_preset: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Defaults, then a YAML file or shipped preset (`paper`, `small`), then `--set` overrides."""
    if path_or_preset is None:
        cfg = Config()
    else:
        p = Path(path_or_preset)
        if not p.exists() and (PRESETS_DIR / f"{path_or_preset}.yaml").exists():
            p = PRESETS_DIR / f"{path_or_preset}.yaml"
        elif not p.exists():
            raise ConfigError(f"{path_or_preset}: no such config file or preset (presets: {', '.join(preset_names())})")
        cfg = Config.from_yaml(p)
    return apply_overrides(cfg, overrides)
