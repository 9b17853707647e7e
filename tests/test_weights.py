"""Loading weights from every supported file shape, and precise errors when they do not fit."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from kdcompress.errors import UserError
from kdcompress.models import build_model, load_weights


@pytest.fixture
def source():
    torch.manual_seed(0)
    return build_model("cifar_resnet8", num_classes=10, in_chans=1)


def fresh():
    return build_model("cifar_resnet8", num_classes=10, in_chans=1)


def same_weights(a, b) -> bool:
    return all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize("wrapper", ["plain", "model", "state_dict", "module_prefix", "safetensors"])
def test_supported_layouts(tmp_path, source, wrapper):
    state = source.state_dict()
    if wrapper == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = tmp_path / "w.pth"
        if wrapper == "module_prefix":
            obj = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
        elif wrapper == "plain":
            obj = state
        else:
            obj = {wrapper: state, "optimizer": {"lr": torch.tensor(0.1)}}
        torch.save(obj, path)
    model = fresh()
    load_weights(model, path)
    assert same_weights(model, source)


def test_class_count_mismatch_is_named(tmp_path):
    other = build_model("cifar_resnet8", num_classes=100, in_chans=1)
    torch.save({"model": other.state_dict()}, tmp_path / "t.pth")
    with pytest.raises(UserError, match="have 100 classes but the data has 10"):
        load_weights(fresh(), tmp_path / "t.pth", "teacher")


def test_wrong_architecture_lists_keys(tmp_path):
    torch.save(build_model("cifar_resnet14", 10, 1).state_dict(), tmp_path / "w.pth")
    with pytest.raises(
        UserError, match=r"do not fit architecture 'cifar_resnet8': unexpected keys layer1\.1"
    ):
        load_weights(fresh(), tmp_path / "w.pth")


def test_shape_mismatch_is_listed(tmp_path):
    torch.save(build_model("cifar_resnet8x4", 10, 1).state_dict(), tmp_path / "w.pth")
    with pytest.raises(
        UserError, match=r"shape mismatches .*conv1\.weight \(32, 1, 3, 3\) vs \(16, 1, 3, 3\)"
    ):
        load_weights(fresh(), tmp_path / "w.pth")


def test_channel_mismatch_says_how_to_fix_it(tmp_path):
    torch.save(build_model("cifar_resnet8", 10, 3).state_dict(), tmp_path / "w.pth")
    with pytest.raises(
        UserError, match=r"take 3-channel images but the data gives 1; add --set data.channels=3"
    ):
        load_weights(fresh(), tmp_path / "w.pth", "teacher")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_weights(fresh(), tmp_path / "none.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(UserError, match="could not be read"):
        load_weights(fresh(), tmp_path / "bad.safetensors")


def test_unknown_architecture_suggests():
    with pytest.raises(UserError, match="Did you mean 'resnet18'"):
        build_model("resnet18x", 10, 3)


def test_timm_models_adapt_to_data():
    model = build_model("resnet18", num_classes=7, in_chans=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    assert timm.is_model("cifar_resnet8")
