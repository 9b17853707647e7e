"""Candidate layers, feature taps, connectors and stage splits across model families."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import kdcompress.models  # noqa: F401  (registers the CIFAR zoo)
from kdcompress.errors import UserError
from kdcompress.models.connectors import Connector
from kdcompress.models.layers import candidate_layers, check_layer_names, middle_stage_layer, stage_end_layers
from kdcompress.models.stages import natural_stage_count, split_stages
from kdcompress.models.taps import FORWARD_FEATURES, FeatureTap


def _model(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=10, **kwargs).eval()


def _names(layers):
    return [layer.name for layer in layers]


def test_zoo_resnet_candidates_in_depth_order_with_shapes():
    layers = candidate_layers(_model("cifar_resnet14"), (3, 32, 32))
    assert _names(layers) == ["relu", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1"]
    assert [layer.depth for layer in layers] == list(range(7))
    assert layers[0].kind == "stem" and layers[0].shape == (16, 32, 32)
    assert layers[3].shape == (32, 16, 16) and layers[-1].shape == (64, 8, 8)
    # layer1 returns its last block's tensor: that block is the stage end, not a duplicate row.
    assert {layer.name: layer.stage_end for layer in layers if layer.stage_end is not None} == {
        "relu": 0,
        "layer1.1": 1,
        "layer2.1": 2,
        "layer3.1": 3,
    }
    assert layers[-1].final and not any(layer.final for layer in layers[:-1])


def test_timm_resnet_candidates():
    layers = candidate_layers(_model("resnet18"), (3, 64, 64))
    assert _names(layers) == ["act1"] + [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert layers[0].shape == (64, 32, 32) and layers[-1].shape == (512, 2, 2) and layers[-1].final
    assert stage_end_layers(_model("resnet18"), 4, (3, 64, 64), layers) == [
        "layer1.1",
        "layer2.1",
        "layer3.1",
        "layer4.1",
    ]
    assert middle_stage_layer(_model("resnet18"), (3, 64, 64), layers) == "layer2.1"


def test_mobilenetv3_candidates_are_its_blocks():
    model = _model("mobilenetv3_small_050")
    layers = candidate_layers(model, (3, 32, 32))
    assert layers[0].name == "bn1" and layers[0].kind == "stem"
    blocks = [layer for layer in layers if layer.kind == "block"]
    assert all(layer.name.startswith("blocks.") and layer.name.count(".") == 2 for layer in blocks)
    assert len(blocks) == sum(len(stage) for stage in model.blocks)
    assert layers[-1].final and layers[-1].name == "blocks.5.0"
    assert [layer.depth for layer in layers] == list(range(len(layers)))


def test_vit_candidates_stem_blocks_final_norm():
    model = _model("test_vit", img_size=32)
    layers = candidate_layers(model, (3, 32, 32))
    assert _names(layers) == ["norm_pre"] + [f"blocks.{i}" for i in range(6)] + ["norm"]
    assert layers[0].kind == "stem" and layers[-1].final
    assert all(layer.shape == (5, 64) for layer in layers)  # cls token + 2x2 patches, 64-d
    # No stage structure: the stage ends of K groups are spread over the blocks.
    assert stage_end_layers(model, 3, (3, 32, 32), layers) == ["blocks.1", "blocks.3", "blocks.5"]


def test_vgg_uses_conv_relu_units_and_functional_final_gets_a_pseudo_layer():
    vgg = candidate_layers(_model("cifar_vgg8"), (3, 32, 32))
    assert _names(vgg) == [f"block{i}.2" for i in range(5)] and {layer.kind for layer in vgg} == {"unit"}
    shuffle = candidate_layers(_model("cifar_shufflev2"), (3, 16, 16))
    assert shuffle[-1].name == FORWARD_FEATURES and shuffle[-1].shape == (1024, 2, 2)


def test_feature_tap_captures_replaces_and_stops():
    model = _model("cifar_resnet8")
    x = torch.randn(2, 3, 16, 16)
    with FeatureTap(model, ["layer2.0", "layer1.0"]) as tap:
        logits = model(x)
    assert tap.order == ["layer1.0", "layer2.0"] and tap.features["layer2.0"].shape == (2, 32, 8, 8)
    assert not model.layer1[0]._forward_hooks  # hooks are gone after the block
    # Replacing an output changes what the rest of the network sees.
    with FeatureTap(model, ["layer3.0"], replace={"layer3.0": torch.zeros_like}):
        assert torch.allclose(model(x), model.fc(torch.zeros(2, 64)))
    assert not torch.allclose(logits, model.fc(torch.zeros(2, 64)))
    # Stopping after the last wanted layer skips the rest of the forward pass.
    tap = FeatureTap(model, ["layer1.0"], stop_after_last=True)
    assert tap.run(x) is None and list(tap.features) == ["layer1.0"]
    # The pre-pool features without a module of their own.
    shuffle = _model("cifar_shufflev2")
    with FeatureTap(shuffle, [FORWARD_FEATURES]) as tap:
        shuffle(x)
    assert tap.features[FORWARD_FEATURES].shape == (2, 1024, 2, 2)
    assert "forward_features" not in shuffle.__dict__


def test_feature_tap_detach_cuts_gradient_before_the_layer():
    model = _model("cifar_resnet8").train()
    with FeatureTap(model, ["layer3.0"], replace={"layer3.0": torch.Tensor.detach}) as tap:
        logits = model(torch.randn(4, 3, 16, 16))
    logits.sum().backward()
    assert model.fc.weight.grad is not None
    assert all(p.grad is None for p in model.layer3.parameters())
    assert tap.features["layer3.0"].requires_grad


def test_bad_layer_names_list_valid_ones():
    model = _model("cifar_resnet8")
    with pytest.raises(
        UserError, match=r"'layer2\.9' is not a module of the teacher.*layer2\.0.*Did you mean"
    ):
        check_layer_names(model, ["layer2.9"], "teacher", (3, 32, 32))
    check_layer_names(model, ["layer2", "layer2.0.conv1", FORWARD_FEATURES], "student", (3, 32, 32))
    with pytest.raises(UserError, match="only 3 candidate layers past its stem"):
        stage_end_layers(model, 5, (3, 32, 32))


@pytest.mark.parametrize(
    ("s_shape", "t_shape"),
    [
        ((8, 16, 16), (32, 8, 8)),  # larger student map: pooled, then 1x1 conv
        ((8, 4, 4), (32, 8, 8)),  # smaller student map: 1x1 conv, then upsampled
        ((17, 16), (5, 64)),  # tokens: Conv1d over the hidden size, token count pooled
        ((16, 8, 8), (5, 64)),  # a CNN map onto ViT tokens
        ((5, 64), (16, 4, 4)),  # ViT tokens onto a CNN map
    ],
)
def test_connector_output_matches_teacher_shape(s_shape, t_shape):
    connector = Connector(s_shape, t_shape)
    out = connector(torch.randn(3, *s_shape))
    assert out.shape == (3, *t_shape)
    out.sum().backward()
    assert connector.conv.weight.grad is not None


STAGE_CASES = [
    ("cifar_resnet8", {}, 16, 3),
    ("cifar_wrn_16_1", {}, 16, 3),
    ("cifar_vgg8", {}, 16, 5),
    ("cifar_mobilenetv2", {}, 16, 4),
    ("cifar_shufflev1", {}, 16, 3),
    ("cifar_shufflev2", {}, 16, 3),
    ("test_resnet", {}, 32, 4),
    ("mobilenetv3_small_050", {}, 32, 4),
    ("mobilenetv2_035", {}, 32, 5),
    ("test_efficientnet", {}, 32, 5),
    ("test_convnext", {}, 32, 4),
    ("test_vit", {"img_size": 32}, 32, 6),
]


@pytest.mark.parametrize(("arch", "kwargs", "size", "natural"), STAGE_CASES, ids=[c[0] for c in STAGE_CASES])
def test_stage_split_composes_to_the_forward(arch, kwargs, size, natural):
    model = _model(arch, **kwargs)
    x = torch.randn(2, 3, size, size)
    assert natural_stage_count(model) == natural
    with torch.no_grad():
        reference = model(x)
        for n in sorted({2, natural}):
            split = split_stages(model, n)
            assert len(split.stages) == n
            h = split.stem(x)
            for stage in split.stages:
                h = stage(h)
            torch.testing.assert_close(split.head(h), reference, rtol=1e-5, atol=1e-5)


def test_vgg_split_keeps_the_64px_pool():
    model = _model("cifar_vgg8")
    x = torch.randn(1, 3, 64, 64)  # block3 sees 8x8 maps and pools, as the published model does
    with torch.no_grad():
        torch.testing.assert_close(split_stages(model, 3)(x), model(x))


def test_stage_split_errors_say_what_works():
    with pytest.raises(UserError, match="supports.*CIFAR zoo.*ViT"):
        split_stages(nn.Sequential(nn.Conv2d(3, 4, 3)))
    with pytest.raises(UserError, match="has 3 stages; it can be split into 1..3 stages, not 4"):
        split_stages(_model("cifar_resnet8"), 4, "student")
