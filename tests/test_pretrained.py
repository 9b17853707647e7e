"""Pretrained weights, offline: timm names with tags, hf-hub repos from a local cache, init vs exact.

The Hub tests run in a subprocess because huggingface_hub reads HF_HOME and HF_HUB_OFFLINE once, when it
is imported (and ``import timm`` imports it): the subprocess sets both before anything is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models._manipulate import adapt_input_conv

from kdcompress.cli import app
from kdcompress.errors import UserError
from kdcompress.models.factory import build_from_spec
from kdcompress.recipe import ModelSpec, TeacherSpec, validate_recipe
from kdcompress.train import engine
from kdcompress.train.schedule import build_optimizer
from tests.conftest import TINY_DATA, ctrl_c_at_epoch, tiny_recipe

REVISION = "0123456789abcdef0123456789abcdef01234567"


def write_hub_repo(hub: Path, repo: str, num_classes: int, in_chans: int, seed: int = 0) -> dict:
    """A timm ``test_resnet`` in the standard Hub cache layout (what `hf download` leaves behind)."""
    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", num_classes=num_classes, in_chans=in_chans)
    folder = hub / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(REVISION)  # no newline: huggingface_hub reads it verbatim
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(snapshot / "model.safetensors"))
    config = {
        "architecture": "test_resnet",
        "num_classes": num_classes,
        "pretrained_cfg": {
            "num_classes": num_classes,
            "input_size": [in_chans, 160, 160],
            "first_conv": "conv1.0",
            "classifier": "fc",
            "mean": [0.5] * in_chans,
            "std": [0.5] * in_chans,
        },
    }
    (snapshot / "config.json").write_text(json.dumps(config))
    return state


@pytest.mark.slow
def test_hub_cache_offline_exact_init_and_missing(tmp_path):
    hub = tmp_path / "hf" / "hub"
    write_hub_repo(hub, "kdtest/imagenet-like", num_classes=1000, in_chans=3)
    write_hub_repo(hub, "kdtest/digits-teacher", num_classes=10, in_chans=1, seed=1)
    script = textwrap.dedent(
        f"""
        import json, sys
        import torch
        from safetensors.torch import load_file
        from timm.models._manipulate import adapt_input_conv
        from typer.testing import CliRunner
        from kdcompress.cli import app
        from kdcompress.errors import UserError
        from kdcompress.models.factory import build_from_spec
        from kdcompress.recipe import ModelSpec, TeacherSpec

        hub = {str(hub)!r}
        snap = lambda repo: f"{{hub}}/models--kdtest--{{repo}}/snapshots/{REVISION}/model.safetensors"
        teacher_file = load_file(snap("digits-teacher"))
        teacher, origin = build_from_spec(
            TeacherSpec(arch="hf-hub:kdtest/digits-teacher", weights="pretrained"), "teacher", 10, 1)
        assert all(torch.equal(v, teacher_file[k]) for k, v in teacher.state_dict().items()), "exact"
        assert "kdtest/digits-teacher" in origin and "exact" in origin, origin

        big = load_file(snap("imagenet-like"))
        student, origin = build_from_spec(
            ModelSpec(arch="hf-hub:kdtest/imagenet-like", init="pretrained"), "student", 10, 1)
        state = student.state_dict()
        trunk = [k for k in state if not k.startswith(("fc.", "conv1.0."))]
        assert trunk and all(torch.equal(state[k], big[k]) for k in trunk), "trunk"
        assert state["fc.weight"].shape == (10, big["fc.weight"].shape[1])
        assert torch.equal(state["conv1.0.weight"], adapt_input_conv(1, big["conv1.0.weight"]))
        assert "classes 1000 -> 10" in origin and "input channels 3 -> 1" in origin, origin

        try:
            build_from_spec(ModelSpec(arch="hf-hub:kdtest/missing", init="pretrained"), "student", 10, 1)
        except UserError as exc:
            message = str(exc)
        assert "not in the local Hugging Face cache" in message and "hf download kdtest/missing" in message

        refused = CliRunner().invoke(app, ["distill", "--teacher", "hf-hub:kdtest/imagenet-like",
            "--teacher-weights", "pretrained", "--student", "cifar_resnet8", "--data", "digits",
            "--out", sys.argv[1], "--device", "cpu"])
        assert refused.exit_code == 2 and "predicts 1000 classes" in refused.output, refused.output
        assert "kdcompress train --model hf-hub:kdtest/imagenet-like --init pretrained" in refused.output
        print("ok")
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "refused")], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
    assert not (tmp_path / "refused").exists()


@pytest.fixture
def imagenet_like_file(tmp_path) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=1000, in_chans=3)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / "imagenet.safetensors"
    save_file(state, str(path))
    return path, state


def test_init_from_a_file_adapts_head_and_first_conv(imagenet_like_file):
    path, stored = imagenet_like_file
    model, origin = build_from_spec(ModelSpec(arch="test_resnet", init=str(path)), "student", 10, 1)
    state = model.state_dict()
    trunk = [k for k in state if not k.startswith(("fc.", "conv1.0."))]
    assert trunk and all(torch.equal(state[k], stored[k]) for k in trunk)
    assert state["fc.weight"].shape[0] == 10  # a new head for the data's classes
    assert torch.equal(state["conv1.0.weight"], adapt_input_conv(1, stored["conv1.0.weight"]))
    assert "classes 1000 -> 10" in origin and "input channels 3 -> 1" in origin


def test_the_same_file_as_teacher_weights_is_refused_with_the_fine_tune_hint(
    runner, imagenet_like_file, tmp_path
):
    path, _ = imagenet_like_file
    args = [
        "distill",
        "--teacher",
        "test_resnet",
        "--teacher-weights",
        str(path),
        "--student",
        "cifar_resnet8",
    ]
    result = runner.invoke(
        app, [*args, "--data", "digits", "--out", str(tmp_path / "run"), "--device", "cpu"]
    )
    assert result.exit_code == 2
    assert "1000 classes but the data has 10" in result.output and "kdcompress train --model" in result.output
    assert not (tmp_path / "run").exists()


def test_no_silent_random_weights(runner, tmp_path):
    with pytest.raises(UserError, match="names pretrained weights, but none were asked for"):
        build_from_spec(ModelSpec(arch="resnet18.a1_in1k"), "student", 10, 1)
    with pytest.raises(UserError, match="The teacher has no weights"):
        build_from_spec(TeacherSpec(arch="cifar_resnet8"), "teacher", 10, 1)
    with pytest.raises(UserError, match="A teacher needs exact weights"):
        build_from_spec(TeacherSpec(arch="cifar_resnet8", init="pretrained"), "teacher", 10, 1)
    with pytest.raises(UserError, match="is set by kdcompress"):
        build_from_spec(ModelSpec(arch="cifar_resnet8", kwargs={"pretrained": True}), "student", 10, 1)
    with pytest.raises(UserError, match="timm has no pretrained weights for 'cifar_resnet8'"):
        build_from_spec(ModelSpec(arch="cifar_resnet8", init="pretrained"), "student", 10, 1)
    with pytest.raises(UserError, match="is not a pretrained tag of resnet18"):
        build_from_spec(ModelSpec(arch="resnet18.bogus", init="pretrained"), "student", 10, 1)
    model, origin = build_from_spec(TeacherSpec(arch="cifar_resnet8", allow_random=True), "teacher", 10, 1)
    assert origin == "random initialisation"
    out = tmp_path / "run"
    args = ["distill", "--teacher", "cifar_resnet14", "--student", "cifar_resnet8", "--data", "digits"]
    result = runner.invoke(app, [*args, "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 2 and "The teacher has no weights" in result.output and not out.exists()
    result = runner.invoke(app, ["probe-layers", "--teacher", "cifar_resnet14", "--data", "digits"])
    assert result.exit_code == 2 and "The teacher has no weights" in result.output


def test_fine_tuning_lrs_per_group_and_across_resume(tmp_path, imagenet_like_file):
    path, _ = imagenet_like_file
    sections = {
        "student": {"arch": "test_resnet", "init": str(path)},
        "optim": {"lr": 0.1, "backbone_lr_scale": 0.01, "freeze_backbone_epochs": 1},
        "schedule": {"name": "constant"},
        "train": {"epochs": 3},
        "data": {**TINY_DATA, "image_size": 16},
    }
    recipe = validate_recipe(tiny_recipe(**sections))
    prepared = engine.prepare(recipe)
    optimizer = build_optimizer(prepared.method, recipe.optim, engine.setup_runtime("cpu"))
    names = [group["name"] for group in optimizer.param_groups]
    assert names == ["head", "backbone"]
    head, backbone = optimizer.param_groups
    assert head["lr"] == pytest.approx(0.1) and backbone["lr"] == pytest.approx(0.001)
    fc = {id(p) for p in prepared.student.get_classifier().parameters()}
    assert {id(p) for p in head["params"]} == fc

    with ctrl_c_at_epoch(3), pytest.raises(KeyboardInterrupt):
        engine.run(recipe, tmp_path / "run", quiet=True)
    result = engine.run(recipe, tmp_path / "run", resume=True, quiet=True)
    rows = result.history
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.1, 0.1])
    assert [r["lr_backbone"] for r in rows] == pytest.approx([0.0, 0.001, 0.001])  # frozen, then 0.01x
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["architecture"] == "test_resnet"
    assert "initialised from file" in config["kdcompress"]["weights"]["student"]
    assert "backbone lr x0.01" in (tmp_path / "run" / "report.md").read_text()
    recorded = (tmp_path / "run" / "recipe.yaml").read_text()
    assert f"init: {path.resolve()}" in recorded  # recorded absolute
