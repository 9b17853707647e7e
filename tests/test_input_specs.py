"""Each model sees its input the way it was trained: per-model input specs, and self-describing exports.

The Hub test runs in a subprocess because huggingface_hub reads HF_HOME and HF_HUB_OFFLINE once, at
import (tests/test_pretrained.py explains the same).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from kdcompress.cli import app
from kdcompress.data import load_data
from kdcompress.data.spec import InputSpec
from kdcompress.deploy.onnx import CONFIG_KEY, read_metadata
from kdcompress.models.preprocessing import file_spec
from kdcompress.recipe import DataSpec, validate_recipe
from kdcompress.train import engine
from tests.conftest import tiny_recipe

REVISION = "89abcdef0123456789abcdef0123456789abcdef"
#: Statistics far from the digits' own (mean 0.3053, std 0.3759): a teacher trained with them and fed
#: the dataset's statistics instead sees a different image.
OWN_MEAN, OWN_STD = [0.8], [0.15]


@pytest.fixture(scope="module")
def own_stats_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits teacher trained on its own normalisation (mean 0.8, std 0.15), 4 epochs."""
    out = tmp_path_factory.mktemp("own-stats") / "run"
    recipe = tiny_recipe(
        "cifar_resnet14",
        student={"input": {"mean": OWN_MEAN, "std": OWN_STD}},
        train={"epochs": 4},
        data={"train_limit": 512, "val_limit": None},
    )
    engine.run(validate_recipe(recipe), out, quiet=True)
    return out


def publish_to_hub(run: Path, hub: Path, repo: str) -> None:
    """The run's model in the standard Hub cache layout, described the timm way (its config.json holds
    ``pretrained_cfg`` with the model's own mean/std), as a model published elsewhere would be."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(REVISION)
    save_file(load_file(str(run / "student.safetensors")), str(snapshot / "model.safetensors"))
    config = json.loads((run / "config.json").read_text())
    timm_config = {k: config[k] for k in ("architecture", "num_classes", "model_args", "pretrained_cfg")}
    (snapshot / "config.json").write_text(json.dumps(timm_config))


@pytest.mark.slow
def test_a_hub_teacher_is_fed_its_own_statistics_inside_distill(own_stats_teacher, tmp_path):
    """The teacher's top-1 inside `distill` equals its top-1 under timm's own pipeline; fed the dataset's
    statistics instead (the old behaviour), it falls apart and a warning says why. A student initialised
    from the same weights follows their convention too."""
    hub = tmp_path / "hf" / "hub"
    publish_to_hub(own_stats_teacher, hub, "kdtest/digits-own-stats")
    script = textwrap.dedent(
        """
        import json, sys
        from pathlib import Path
        import timm, torch
        from typer.testing import CliRunner
        import kdcompress.models  # the cifar_* zoo
        from kdcompress.cli import app
        from kdcompress.data import read_source

        out = Path(sys.argv[1])
        name = "hf-hub:kdtest/digits-own-stats"
        model = timm.create_model(name, pretrained=True).eval()
        cfg = timm.data.resolve_data_config({}, model=model)
        val = read_source("digits").val
        mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(cfg["std"]).view(1, -1, 1, 1)
        with torch.no_grad():
            predicted = model((val.images.float() / 255 - mean) / std).argmax(1)
        timm_top1 = 100.0 * (predicted == val.labels).float().mean().item()

        common = ["--student", "cifar_resnet8", "--data", "digits", "--epochs", "1", "--device", "cpu",
                  "--batch-size", "32", "--set", "data.train_limit=64", "--quiet"]
        runner = CliRunner()
        results = {"timm_top1": timm_top1, "timm_mean": list(cfg["mean"])}
        for label, extra in (("own", []), ("dataset", ["--set", "teacher.input.mean=[0.3053]",
                                                        "--set", "teacher.input.std=[0.3759]"])):
            run = runner.invoke(app, ["distill", "--teacher", name, "--teacher-weights", "pretrained",
                                      *common, *extra, "--out", str(out / label)])
            assert run.exit_code == 0, run.output
            config = json.loads((out / label / "config.json").read_text())["kdcompress"]
            results[label] = {"top1": config["teacher_val_top1"], "output": run.output,
                              "recorded": config["recipe"]["teacher"]["input"]}
        init = runner.invoke(app, ["train", "--model", name, "--init", "pretrained", "--data", "digits",
                                   "--epochs", "1", "--device", "cpu", "--set", "data.train_limit=64",
                                   "--quiet", "--out", str(out / "init")])
        assert init.exit_code == 0, init.output
        results["init_cfg"] = json.loads((out / "init" / "config.json").read_text())["pretrained_cfg"]
        print(json.dumps(results))
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "runs")], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["timm_mean"] == OWN_MEAN
    assert results["timm_top1"] > 80
    assert results["own"]["top1"] == pytest.approx(results["timm_top1"], abs=1e-4)  # the same images right
    assert results["own"]["recorded"]["mean"] == OWN_MEAN and results["own"]["recorded"]["std"] == OWN_STD
    assert "warning" not in results["own"]["output"]
    assert results["dataset"]["top1"] < results["timm_top1"] - 30  # what feeding one normalisation did
    assert results["init_cfg"]["mean"] == OWN_MEAN and results["init_cfg"]["std"] == OWN_STD


def test_a_teacher_fine_tuned_here_is_measured_as_its_run_measured_it(teacher_run, tmp_path):
    """A kdcompress run as the teacher keeps its recorded convention: the top-1 `distill` measures is the
    best top-1 its own run recorded on the same validation images."""
    recipe = tiny_recipe(
        "cifar_resnet8", "kd", teacher={"arch": "cifar_resnet14", "weights": str(teacher_run)}
    )
    engine.run(validate_recipe(recipe), tmp_path / "kd", quiet=True)
    config = json.loads((tmp_path / "kd" / "config.json").read_text())["kdcompress"]
    recorded = json.loads((teacher_run / "config.json").read_text())["kdcompress"]["val_top1"]
    assert config["teacher_val_top1"] == pytest.approx(recorded, abs=1e-9)
    assert config["inputs"]["teacher"]["origin"].startswith("the config.json of")


def test_a_timm_train_py_checkpoint_carries_its_training_statistics(own_stats_teacher, tmp_path):
    """timm's train.py stores its argparse arguments beside the weights: the checkpoint loads (only that
    class is allowed past weights_only) and its --mean/--std become the teacher's spec."""
    state = load_file(str(own_stats_teacher / "student.safetensors"))
    args = argparse.Namespace(
        model="cifar_resnet14", mean=OWN_MEAN, std=OWN_STD, interpolation="", crop_pct=None
    )
    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 3, "arch": "cifar_resnet14", "state_dict": state, "args": args}, path)
    spec = file_spec(path, "cifar_resnet14")
    assert spec is not None and spec.mean == tuple(OWN_MEAN) and spec.std == tuple(OWN_STD)
    assert "training arguments" in spec.origin
    recipe = tiny_recipe("cifar_resnet8", "kd", teacher={"arch": "cifar_resnet14", "weights": str(path)})
    prepared = engine.prepare(validate_recipe(recipe))
    assert prepared.specs["teacher"].mean == tuple(OWN_MEAN)
    assert prepared.specs["student"].mean == (0.3053,)  # a student from scratch: the dataset's statistics


def test_batches_carry_each_models_input_from_the_same_pixels():
    data = load_data(DataSpec(source="digits", train_limit=32, val_limit=16, augment="crop_flip"))
    student, teacher = data.spec, InputSpec((0.5,), (0.25,))
    loader = data.train_loader(8, torch.device("cpu"), seed=0, specs=(student, teacher))
    batch = next(iter(loader.batches(1)))
    pixels_s = batch.images * (student.std[0] * 255) + student.mean[0] * 255
    pixels_t = batch.teacher_images * (teacher.std[0] * 255) + teacher.mean[0] * 255
    assert torch.allclose(pixels_s, pixels_t, atol=1e-3)  # one crop/flip per sample, two normalisations
    assert not torch.allclose(batch.images, batch.teacher_images)
    same = data.train_loader(
        8, torch.device("cpu"), seed=0, specs=(student, InputSpec(student.mean, student.std))
    )
    one = next(iter(same.batches(1)))
    assert one.teacher_images is one.images  # equal specs: one tensor, no second normalisation


def test_a_teacher_whose_weights_carry_no_convention_is_checked(runner, own_stats_teacher, tmp_path):
    """A bare state dict says nothing about its normalisation: it is fed the dataset's statistics, and
    the check before training names a convention under which it scores clearly better."""
    bare = tmp_path / "bare" / "weights.safetensors"
    bare.parent.mkdir()
    shutil.copy(own_stats_teacher / "student.safetensors", bare)
    args = ["distill", "--teacher", "cifar_resnet14", "--teacher-weights", str(bare)]
    args += ["--student", "cifar_resnet8", "--data", "digits", "--epochs", "1", "--device", "cpu"]
    args += ["--set", "data.train_limit=64", "--out", str(tmp_path / "r")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "carries no input convention, so it was fed mean (0.3053), std (0.3759)" in said
    assert "instead of" in said and "on 359 validation images" in said and "set teacher.input.mean=[" in said


def test_a_random_teacher_is_flagged_before_training(runner, tmp_path):
    args = ["distill", "--teacher", "cifar_resnet8", "--student", "cifar_resnet8", "--data", "digits"]
    args += ["--epochs", "1", "--device", "cpu", "--set", "teacher.allow_random=true"]
    args += ["--set", "data.train_limit=64", "--set", "data.val_limit=64", "--out", str(tmp_path / "r")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "near chance (10.00%)" in said and "another order" in said and "mean (0.3053)" in said


def test_an_onnx_file_alone_evaluates_and_benches(runner, own_stats_teacher, tmp_path):
    """`export --format onnx` writes a file that describes itself: copied anywhere on its own, `eval` and
    `bench` read its input spec and classes from its metadata."""
    exported = tmp_path / "export"
    result = runner.invoke(
        app, ["export", str(own_stats_teacher), "--format", "onnx", "--out", str(exported)]
    )
    assert result.exit_code == 0, result.output
    alone = tmp_path / "elsewhere" / "digits.onnx"
    alone.parent.mkdir()
    shutil.copy(exported / "model.onnx", alone)
    props = read_metadata(alone)
    config = json.loads(props[CONFIG_KEY])
    assert json.loads(props["mean"]) == OWN_MEAN and json.loads(props["std"]) == OWN_STD
    assert json.loads(props["class_names"]) == [str(i) for i in range(10)] and props["kdcompress_version"]
    assert (
        config["pretrained_cfg"]
        == json.loads((own_stats_teacher / "config.json").read_text())["pretrained_cfg"]
    )
    report = tmp_path / "eval.json"
    evaluated = runner.invoke(app, ["eval", str(alone), "--data", "digits", "--json", str(report)])
    assert evaluated.exit_code == 0, evaluated.output
    measured = json.loads(report.read_text())
    assert measured["input"]["mean"] == OWN_MEAN
    top1 = measured["top1"]
    recorded = json.loads((own_stats_teacher / "config.json").read_text())["kdcompress"]["val_top1"]
    assert top1 == pytest.approx(recorded, abs=1e-6)  # fed its own statistics, it scores as in training
    bench = runner.invoke(app, ["bench", str(alone), "--batch-sizes", "1", "--data", "digits"])
    assert bench.exit_code == 0, bench.output
