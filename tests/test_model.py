"""build_model and the PoseNet it builds: encoder and decoder, ImageNet weight loading, model_info."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from efficientnet_pytorch import EfficientNet

from tune_hand.config import ENCODERS, Config, ModelConfig
from tune_hand.errors import TuneHandError
from tune_hand.model import PoseNet, build_encoder, build_model, describe_model
from tune_hand.model.decoder import bins_to_range, soft_argmax_1d
from tune_hand.model.encoder import hub_weights_path
from tune_hand.model.info import format_info, model_info

S = 64  # image size for everything that runs a forward pass
RANGES = torch.tensor([[-120.0, 120.0], [-130.0, 130.0], [300.0, 1000.0]])
LAST_BLOCK_CHANNELS = {"efficientnet-b0": 320, "efficientnet-b1": 320, "efficientnet-b2": 352,
                       "efficientnet-b3": 384, "efficientnet-b4": 448, "efficientnet-b5": 512,
                       "efficientnet-b6": 576, "efficientnet-b7": 640}


def build(model: ModelConfig, image_size: int = S, **kwargs) -> PoseNet:
    """The model of config section `model` at `image_size`, through the front door as the code builds it."""
    cfg = Config()
    cfg.model, cfg.data.image_size = model, image_size
    return build_model(cfg, **kwargs)


def small(**overrides) -> ModelConfig:
    """b0 at half width and depth, a narrow two-block decoder: fast wherever the encoder doesn't matter."""
    base = dict(encoder="efficientnet-b0", width_coefficient=0.5, depth_coefficient=0.5, channels=16,
                blocks=2, pretrained=False)
    return ModelConfig(**{**base, **overrides})


def images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, S, S, generator=torch.Generator().manual_seed(seed))


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def calibrated(model: PoseNet) -> PoseNet:
    """Eval mode with BatchNorm statistics of one batch. With the initial running statistics
    (mean 0, var 1) a fresh EfficientNet's eval activations vanish (~1e-13) and every
    prediction is the middle of the range, which would make equality tests vacuous."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: after one batch, that batch's statistics
    with torch.no_grad():
        model.train()(images(8, seed=99))
    return model.eval()


def meta_model(**overrides) -> PoseNet:
    with torch.device("meta"):
        return build(ModelConfig(pretrained=False, **overrides), 224)


# -- every encoder the search may pick ---------------------------------------------------

@pytest.mark.parametrize("encoder", ENCODERS)
def test_every_encoder_variant_runs_forward_and_backward(encoder):
    """Each variant at its own width, but one MBConv block per stage (depth_coefficient 0.1,
    7 blocks instead of 16-55): the variant's channel counts, at a cost the suite can pay
    for all eight (well under a second each)."""
    torch.manual_seed(0)
    model = build(ModelConfig(encoder=encoder, depth_coefficient=0.1, channels=16, blocks=2, pretrained=False),
                  ranges_mm=RANGES)
    assert model.encoder.out_channels == LAST_BLOCK_CHANNELS[encoder] and len(model.encoder._blocks) == 7
    pred, heatmaps = model.forward_with_heatmaps(images())
    assert pred.shape == (2, 21, 3) and pred.dtype == torch.float32
    assert ((pred >= RANGES[:, 0]) & (pred <= RANGES[:, 1])).all()
    assert {k: tuple(v.shape) for k, v in heatmaps.items()} == {a: (2, 21, 8) for a in "xyz"}
    pred.square().mean().backward()
    for name in ("encoder._conv_stem.weight", "encoder._blocks.6._project_conv.weight",
                 "decoder.xy_stack.0.0.weight", "decoder.z_head.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    # conv_head is built (for the parameter count) but never runs
    assert model.encoder._conv_head.weight.grad is None


# -- architecture: the paper's figures pin it down ------------------------------------------

def test_parameter_counts_match_the_paper():
    assert n_params(meta_model(encoder="efficientnet-b4")) == 19_504_391
    assert n_params(meta_model(encoder="efficientnet-b0")) == 5_439_035
    assert n_params(meta_model(encoder="efficientnet-b4", separable_order="pointwise_first")) == 19_504_391


def test_model_info_reports_unused_conv_head_and_both_separable_orders():
    cfg = Config()
    paper = model_info(cfg)
    assert paper["params_total"] == 19_504_391
    assert paper["params_total"] == paper["params_encoder"] + paper["params_decoder"]
    assert paper["params_unused"] == 806_400 and paper["params_used"] == 18_697_991
    assert paper["heatmap_bins"] == 112
    assert paper["macs"] == paper["macs_encoder"] + paper["macs_decoder"]
    assert paper["macs_encoder"] == pytest.approx(1.46e9, rel=0.01)
    assert paper["macs_decoder"] == pytest.approx(0.65e9, rel=0.01)
    cfg.model.separable_order = "pointwise_first"
    fast = model_info(cfg)
    assert fast["params_total"] == paper["params_total"]
    assert fast["macs_decoder"] == pytest.approx(0.24e9, rel=0.02)
    assert "conv_head" in paper["note"] and "19.50M" in format_info(paper)


def test_heatmap_bins_follow_image_size_and_blocks():
    for blocks in (1, 2, 3):
        cfg = Config()
        cfg.data.image_size, cfg.model = S, small(blocks=blocks)
        model = build_model(cfg)
        _, heatmaps = model.forward_with_heatmaps(images(1))
        assert heatmaps["x"].shape[-1] == model.heatmap_bins == cfg.heatmap_bins() == (S // 32) * 2**blocks
        assert torch.allclose(heatmaps["y"].sum(-1), torch.ones(1, 21))


def test_kernel_size_3_gives_the_same_output_size():
    model = build(small(kernel_size=3, blocks=3))
    pred, heatmaps = model.forward_with_heatmaps(images())
    assert pred.shape == (2, 21, 3) and heatmaps["z"].shape == (2, 21, 16)


@pytest.mark.parametrize("overrides", [dict(split_z=False), dict(separable=False)])
def test_decoder_variants_run(overrides):
    model = build(small(blocks=3, **overrides))
    pred = model(images())
    pred.mean().backward()
    assert pred.shape == (2, 21, 3)
    assert (model.decoder.z_stack is None) == ("split_z" in overrides)


def test_shared_stack_has_fewer_parameters():
    assert n_params(build(small(split_z=False)).decoder) < n_params(build(small()).decoder)


def test_encoder_batchnorm_momentum_is_pytorch_convention():
    model = build(small(encoder_bn_momentum=0.1))
    assert model.encoder._bn0.momentum == pytest.approx(0.1)
    assert model.encoder._blocks[-1]._bn2.momentum == pytest.approx(0.1)


# -- soft-argmax and the coordinate mapping -----------------------------------------------

def test_soft_argmax_equals_argmax_on_sharply_peaked_logits():
    logits = torch.randn(4, 21, 16, generator=torch.Generator().manual_seed(1)) * 1000
    index, probs = soft_argmax_1d(logits)
    assert torch.allclose(index, logits.argmax(-1).float(), atol=1e-4)
    assert probs.shape == logits.shape
    ranges = torch.tensor([[-10.0, 20.0], [0.0, 1.0], [300.0, 1000.0]])
    mapped = bins_to_range(torch.stack([index] * 3, -1), ranges, 16)
    expected = ranges[:, 0] + logits.argmax(-1).float()[..., None] / 15 * (ranges[:, 1] - ranges[:, 0])
    assert torch.allclose(mapped, expected, atol=1e-3)


def test_first_and_last_bin_map_to_the_range_ends():
    ends = bins_to_range(torch.tensor([[0.0, 0.0, 0.0], [7.0, 7.0, 7.0]]), RANGES, 8)
    assert torch.equal(ends, RANGES.T)


def test_soft_argmax_stays_float32_under_autocast():
    model = build(small(), ranges_mm=RANGES).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        pred, heatmaps = model.forward_with_heatmaps(images())
    assert pred.dtype == torch.float32 and heatmaps["x"].dtype == torch.float32


# -- PoseNet: inputs and coordinate frame ------------------------------------------------------

def test_normalize_none_feeds_raw_images_and_imagenet_standardises():
    seen = {}
    for mode in ("none", "imagenet"):
        model = build(small(normalize=mode))
        model.encoder.register_forward_pre_hook(lambda module, args, mode=mode: seen.update({mode: args[0]}))
        model(images())
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.equal(seen["none"], images())
    assert torch.allclose(seen["imagenet"], (images() - mean) / std)


def test_channels_last_input_gives_the_same_prediction():
    model = calibrated(build(small(), ranges_mm=RANGES))
    x = images()
    with torch.no_grad():
        pred = model(x)
        assert pred.std() > 1.0  # not the degenerate all-centre prediction
        assert torch.allclose(pred, model(x.contiguous(memory_format=torch.channels_last)), atol=1e-3)


def test_to_camera_adds_the_mean_root_for_root_relative_targets():
    root = torch.tensor([10.0, -20.0, 500.0])
    pred = torch.randn(2, 21, 3)
    relative = build(small(target="root_relative"), mean_root_mm=root)
    camera = build(small(target="camera"), mean_root_mm=root)
    assert torch.equal(relative.to_camera(pred), pred + root)
    assert torch.equal(camera.to_camera(pred), pred)


def test_frame_travels_in_the_state_dict():
    model = calibrated(build(small(), ranges_mm=RANGES, mean_root_mm=torch.tensor([1.0, 2.0, 3.0])))
    state = model.state_dict()
    assert {"ranges_mm", "mean_root_mm", "input_mean", "input_std"} <= set(state)
    fresh = build(small()).eval()  # placeholder frame, other random weights
    fresh.load_state_dict(state)
    x = images()
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    assert torch.equal(fresh.mean_root_mm, torch.tensor([1.0, 2.0, 3.0]))


def test_bad_frame_and_image_size_are_refused():
    with pytest.raises(ValueError, match="ranges_mm"):
        build(small(), ranges_mm=torch.tensor([[1.0, -1.0]] * 3))
    with pytest.raises(ValueError, match=r"expected images \(B, 3, 64, 64\)"):
        build(small())(torch.rand(1, 3, 96, 96))


# -- ImageNet weights ----------------------------------------------------------------------------

def b0_config(**model) -> Config:
    cfg = Config()
    cfg.data.image_size = S
    cfg.model = dataclasses.replace(ModelConfig(encoder="efficientnet-b0", channels=16, blocks=2), **model)
    return cfg


@pytest.fixture(scope="module")
def b0_imagenet_state():
    """A random efficientnet-pytorch b0 state_dict, classifier included, as the released files."""
    torch.manual_seed(3)
    return EfficientNet.from_name("efficientnet-b0").state_dict()


def assert_loaded(model: PoseNet, state: dict) -> None:
    own = model.encoder.state_dict()
    for key, value in state.items():
        if not key.startswith("_fc."):
            assert torch.equal(own[key], value), key


def test_weights_load_from_model_weights(tmp_path, b0_imagenet_state):
    path = tmp_path / "b0.pth"
    torch.save(b0_imagenet_state, path)
    assert_loaded(build_model(b0_config(weights=str(path))), b0_imagenet_state)


def test_weights_load_from_the_torch_hub_cache(tmp_path, monkeypatch, b0_imagenet_state):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = hub_weights_path("efficientnet-b0")
    assert path == tmp_path / "hub" / "checkpoints" / "efficientnet-b0-355c32eb.pth"
    path.parent.mkdir(parents=True)
    torch.save(b0_imagenet_state, path)
    assert_loaded(build_model(b0_config()), b0_imagenet_state)


def test_missing_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(TuneHandError) as err:
        build_model(b0_config())
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "hub" / "checkpoints" / "efficientnet-b0-355c32eb.pth") in message
    assert "model.weights=" in message and "model.pretrained=false" in message
    with pytest.raises(TuneHandError, match="model.weights=.*nope.pth: no such file"):
        build_model(b0_config(weights=str(tmp_path / "nope.pth")))


def test_corrupt_or_foreign_weights_name_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a torch file")
    with pytest.raises(TuneHandError, match="corrupt.pth: cannot read") as err:
        build_model(b0_config(weights=str(corrupt)))
    assert "\n" not in str(err.value)
    foreign = tmp_path / "b1.pth"
    torch.save(EfficientNet.from_name("efficientnet-b1", include_top=False).state_dict(), foreign)
    with pytest.raises(TuneHandError, match="b1.pth: not efficientnet-pytorch weights for efficientnet-b0"):
        build_model(b0_config(weights=str(foreign)))


# -- the front door ------------------------------------------------------------------------------

def test_pretrained_argument_overrides_the_config(tmp_path, monkeypatch, b0_imagenet_state):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no file in the hub cache: loading would raise
    build_model(b0_config(), pretrained=False)  # what a checkpoint is loaded over: no ImageNet file needed
    path = tmp_path / "b0.pth"
    torch.save(b0_imagenet_state, path)
    assert_loaded(build_model(b0_config(pretrained=False, weights=str(path)), pretrained=True), b0_imagenet_state)


def test_build_encoder_is_the_encoder_build_model_uses():
    cfg = small(encoder_bn_momentum=0.1)
    encoder, model = build_encoder(cfg, S), build(cfg)
    assert ({k: v.shape for k, v in encoder.state_dict().items()}
            == {k: v.shape for k, v in model.encoder.state_dict().items()})
    assert encoder._bn0.momentum == pytest.approx(0.1)
    assert encoder(images()).shape == (2, model.encoder.out_channels, S // 32, S // 32)


def test_describe_model_is_one_line_naming_encoder_scaling_and_decoder():
    assert describe_model(ModelConfig()) == "efficientnet-b4 C=128 N=4"
    assert describe_model(small()) == "efficientnet-b0 width=0.5 depth=0.5 C=16 N=2"
