"""The layer probe: pooling rule, grouping, agreement with quality.knowledge_quality, and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import timm
import torch

from kdcompress.cli import app
from kdcompress.data import load_data
from kdcompress.errors import UserError
from kdcompress.methods.alignment import align_layers
from kdcompress.models.taps import FeatureTap
from kdcompress.probe import quality
from kdcompress.probe.collect import MAX_VALUES, pooled_shape
from kdcompress.probe.layers import probe_layers
from kdcompress.recipe import DataSpec


@pytest.fixture(scope="module")
def digits():
    return load_data(DataSpec(source="digits", train_limit=400, val_limit=64))


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return timm.create_model("cifar_resnet8", num_classes=10, in_chans=1)


def test_pooled_shape_follows_the_262144_rule():
    assert pooled_shape((64, 64, 64)) == (64, 64, 64)  # exactly 262,144 values: kept
    assert pooled_shape((256, 56, 56)) == (256, 28, 28)  # 802,816 -> factor 2
    assert pooled_shape((128, 112, 112)) == (128, 38, 38)  # factor 3 is the first that fits
    assert pooled_shape((197, 768), 50_000) == (50, 768)  # tokens are pooled along the token axis
    assert pooled_shape((300_000,)) == (300_000,)  # nothing spatial to pool
    assert pooled_shape((512, 7, 7), 100) == (512, 1, 1)
    assert math.prod(pooled_shape((256, 56, 56))) <= MAX_VALUES


def test_probe_rows_match_knowledge_quality_and_choose_top_q(digits, teacher):
    result = probe_layers(teacher, digits, samples=120, top_k=2, device="cpu", show_progress=False)
    assert teacher.training  # mode restored
    names = [row.name for row in result.rows]
    assert names == ["relu", "layer1.0", "layer2.0", "layer3.0"]
    assert [row.depth for row in result.rows] == [0, 1, 2, 3]
    assert result.settings["samples"] == 120 and result.settings["n_train"] == 400
    # Q of one layer recomputed by hand on the same balanced sample.
    indices = quality.balanced_indices(digits.dataset.train.labels, 120)
    (images,) = digits.transform(torch.device("cpu"), False)(digits.dataset.train.images[indices])
    teacher.eval()
    with FeatureTap(teacher, ["layer2.0"]) as tap, torch.no_grad():
        teacher(images)
    teacher.train()
    expected = quality.knowledge_quality(tap.features["layer2.0"], digits.dataset.train.labels[indices], 400)
    row = result.rows[2]
    assert row.quality == pytest.approx(expected["quality"], rel=1e-4)
    assert row.separation == pytest.approx(expected["separation"], rel=1e-4, abs=1e-6)
    top = sorted(result.rows, key=lambda r: -r.quality)[:2]
    assert result.chosen == [r.name for r in sorted(top, key=lambda r: r.depth)]
    assert [r.name for r in result.rows if r.chosen] == result.chosen


def test_probe_groups_and_max_dim_do_not_change_the_method(digits, teacher):
    one = probe_layers(teacher, digits, samples=60, device="cpu", show_progress=False)
    split = probe_layers(teacher, digits, samples=60, device="cpu", show_progress=False, budget_bytes=1)
    assert split.settings["groups"] == 4 and one.settings["groups"] == 1
    assert [r.quality for r in split.rows] == pytest.approx([r.quality for r in one.rows], rel=1e-6)
    small = probe_layers(teacher, digits, samples=60, device="cpu", show_progress=False, max_dim=128)
    assert all(row.dim <= 128 for row in small.rows)
    assert small.rows[0].pooled_shape == [16, 2, 2] and small.rows[0].shape == [16, 8, 8]


def test_align_layers_modes(digits, teacher):
    student = timm.create_model("cifar_resnet8", num_classes=10, in_chans=1)
    shape = (1, 8, 8)
    stages = align_layers("stages", teacher, student, shape, 3)
    assert stages.teacher_layers == ["layer1.0", "layer2.0", "layer3.0"] and stages.probe is None
    auto = align_layers("auto", teacher, student, shape, 2, data=digits, probe_samples=60, probe_device="cpu")
    assert auto.teacher_layers == auto.probe.chosen and auto.student_layers == ["layer2.0", "layer3.0"]
    given = align_layers("auto", teacher, student, shape, 2, teacher_layers=["relu", "layer3.0"])
    assert given.probe is None and given.teacher_layers == [
        "relu",
        "layer3.0",
    ]  # a resumed run probes nothing
    with pytest.raises(UserError, match="is not a module of the student"):
        align_layers("manual", teacher, student, shape, 1, teacher_layers=["relu"], student_layers=["nope"])


def test_probe_layers_cli_writes_json_and_plot(runner, tmp_path, teacher_run):
    json_file, plot = tmp_path / "probe.json", tmp_path / "probe.png"
    args = [
        "probe-layers",
        "--teacher",
        "cifar_resnet14",
        "--teacher-weights",
        str(teacher_run),
        "--data",
        "digits",
        "--samples",
        "80",
        "--top-k",
        "3",
        "--json",
        str(json_file),
        "--plot",
        str(plot),
        "--device",
        "cpu",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "knowledge quality" in result.output and "layer2.1" in result.output and "chosen:" in result.output
    report = json.loads(json_file.read_text())
    assert len(report["chosen"]) == 3 and report["settings"]["samples"] == 80
    assert report["settings"]["teacher"] == "cifar_resnet14" and report["settings"]["data"] == "digits"
    rows = report["rows"]
    assert [r["depth"] for r in rows] == list(range(len(rows))) and len(rows) == 7
    assert {"name", "shape", "separation", "information", "efficiency", "quality", "chosen"} <= set(rows[0])
    assert [r["name"] for r in rows if r["chosen"]] == report["chosen"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_probe_layers_list(runner):
    result = runner.invoke(app, ["probe-layers", "--teacher", "cifar_resnet8", "--data", "digits", "--list"])
    assert result.exit_code == 0, result.output
    for text in ("relu", "layer1.0", "layer3.0", "16x8x8", "64x2x2", "stem", "final"):
        assert text in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--teacher", "resnet8q", "--data", "digits"], "Unknown architecture 'resnet8q'"),
        (["--data", "digits"], "Say which teacher to probe"),
        (
            ["--teacher", "cifar_resnet8", "--data", "digits", "--samples", "40", "--top-k", "9"]
            + ["--set", "teacher.allow_random=true"],
            "Cannot choose 9 layers",
        ),
        (["--teacher", "cifar_resnet8", "--data", "digits", "--plot", "x.txt"], "--plot"),
    ],
    ids=["unknown-arch", "no-teacher", "top-k", "plot-suffix"],
)
def test_probe_layers_user_errors_exit_2(runner, args, message):
    result = runner.invoke(app, ["probe-layers", *args, "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output


def test_align_auto_probes_once_per_teacher_data_and_settings(monkeypatch):
    import kdcompress.probe.layers as probe_module
    from kdcompress.data import load_data
    from kdcompress.recipe import DataSpec

    calls = []
    original = probe_module.probe_layers

    def counting(*args, **kwargs):
        calls.append(kwargs["samples"])
        return original(*args, **kwargs)

    monkeypatch.setattr(probe_module, "probe_layers", counting)
    torch.manual_seed(0)
    teacher = timm.create_model("cifar_resnet8", num_classes=10, in_chans=1)
    data = load_data(DataSpec(source="digits", train_limit=200))
    first = probe_module.cached_probe(teacher, data, samples=60, top_k=2, device="cpu", show_progress=False)
    again = probe_module.cached_probe(teacher, data, samples=60, top_k=2, device="cpu", show_progress=False)
    assert calls == [60] and again.chosen == first.chosen and again.scores() == first.scores()
    probe_module.cached_probe(teacher, data, samples=80, top_k=2, device="cpu", show_progress=False)
    with torch.no_grad():
        teacher.fc.weight.add_(1.0)  # other weights: another teacher
    probe_module.cached_probe(teacher, data, samples=60, top_k=2, device="cpu", show_progress=False)
    assert calls == [60, 80, 60]
