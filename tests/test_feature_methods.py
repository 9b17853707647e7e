"""fitnet, featkd and blockkd: loss terms, gradient routing, alignment modes, and `distill` end to end."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from kdcompress import losses
from kdcompress.cli import app
from kdcompress.errors import UserError
from kdcompress.methods import StepProgress, resolve_method
from kdcompress.models.taps import FeatureTap

STEP = StepProgress(epoch=1, step=0, steps_per_epoch=10)
TINY = ["--data", "digits", "--epochs", "1", "--batch-size", "64", "--quiet"]
TINY += ["--set", "data.train_limit=128", "--set", "data.val_limit=64", "--set", "train.device=cpu"]


def _model(name: str, **kwargs):
    return timm.create_model(name, num_classes=10, **kwargs)


def _method(name: str, teacher, student, example, **options):
    cls, config = resolve_method(name, options)
    return cls.build(config, student, teacher, example)


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, 16, 16, generator=generator), torch.randint(0, 10, (8,), generator=generator)


# ---- Block-KD -------------------------------------------------------------------------------------


def test_blockkd_stepping_stones_and_loss(batch):
    torch.manual_seed(0)
    images, labels = batch
    method = _method("blockkd", _model("cifar_resnet14"), _model("cifar_resnet8"), images, temperature=2.0)
    assert method.config.num_stages == 3 and len(method.connectors) == 3
    method.train()
    logits, stones = method.stepping_stones(images)
    assert logits.shape == (8, 10) and [z.shape for z in stones] == [(8, 10)] * 3
    torch.testing.assert_close(logits, method.student(images))  # the split student is the student
    teacher_out = method.teacher_outputs(images)
    _, terms = method(images, labels, STEP, teacher_out)
    assert set(terms) == {"task", "distill", "cross"}
    # The formula, from the same stepping-stone logits (BN in eval so both passes agree).
    method.eval()
    logits, stones = method.stepping_stones(images)
    _, terms = method(images, labels, STEP, teacher_out)
    weighted = [(logits, 1.0), (stones[0], 0.25), (stones[1], 0.5), (stones[2], 1.0)]
    ensemble = torch.stack(stones).mean(0)
    task = sum(w * F.cross_entropy(z, labels) for z, w in weighted)
    distill = sum(w * losses.kd(z, teacher_out, 2.0) for z, w in weighted)
    cross = losses.kd(logits, ensemble, 2.0) + sum(losses.kd(z, ensemble, 2.0) for z in stones)
    torch.testing.assert_close(terms["task"], task)
    torch.testing.assert_close(terms["distill"], distill)
    torch.testing.assert_close(terms["cross"], cross)


def test_blockkd_gradients_flow_through_the_frozen_teacher(batch):
    torch.manual_seed(0)
    images, labels = batch
    teacher = _model("cifar_resnet14")
    method = _method(
        "blockkd", teacher, _model("cifar_resnet8"), images, w_task=0.0, w_distill=0.0, w_cross=1.0
    )
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    method.train()
    assert not teacher.training
    _, terms = method(images, labels, STEP, method.teacher_outputs(images))
    # Only the cross term: every gradient the student gets comes through the stepping stones.
    terms["cross"].backward()
    assert all(
        c.conv.weight.grad is not None and c.conv.weight.grad.abs().sum() > 0 for c in method.connectors
    )
    assert method.student.layer1[0].conv1.weight.grad.abs().sum() > 0  # student prefix
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not any(name.startswith("teacher") for name, _ in method.named_parameters())
    optimizer.step()
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)


def test_old_weight_names_still_load_and_record_the_new_ones():
    """Recipes written before the weights were named alike (blockkd a/b/c, fitnet w) keep working, and
    what a run records uses today's names."""
    _, config = resolve_method("blockkd", {"a": 0.5, "b": 0.25, "c": 2.0})
    assert (config.w_task, config.w_distill, config.w_cross) == (0.5, 0.25, 2.0)
    _, config = resolve_method("fitnet", {"w": 7.0})
    assert config.w_hint == 7.0 and "w_hint" in config.model_dump() and "w" not in config.model_dump()


def test_blockkd_on_vits_groups_blocks():
    torch.manual_seed(0)
    images = torch.randn(4, 3, 32, 32)
    teacher = _model("test_vit", img_size=32)
    student = _model("test_vit", img_size=32, embed_dim=32, depth=4, num_heads=2)
    method = _method("blockkd", teacher, student, images)
    assert method.config.num_stages == 4
    assert method.extra_state_for_report()["teacher_stages"] == [
        "blocks.0, blocks.1",
        "blocks.2",
        "blocks.3, blocks.4",
        "blocks.5",
    ]
    assert method.connectors[0].conv.in_channels == 32 and method.connectors[0].conv.out_channels == 64
    _, terms = method(images, torch.arange(4), STEP, method.teacher_outputs(images))
    sum(terms.values()).backward()
    assert method.student.blocks[0].attn.qkv.weight.grad is not None


# ---- featkd ---------------------------------------------------------------------------------------


def test_featkd_backbone_gets_no_gradient_from_ce(batch):
    torch.manual_seed(0)
    images, labels = batch
    with pytest.warns(UserWarning, match="3 layers past its stem, so 3 layer pairs"):
        method = _method("featkd", _model("cifar_resnet14"), _model("cifar_resnet8"), images)
    assert method.student_layers == ["layer1.0", "layer2.0", "layer3.0"]  # never the stem
    assert method.teacher_layers == ["layer1.1", "layer2.1", "layer3.1"]
    assert method.config.num_pairs == 3
    assert method.detach_layer == "layer3.0"
    method.train()
    teacher_out = method.teacher_outputs(images)
    assert all(not t.requires_grad for t in teacher_out)
    _, terms = method(images, labels, STEP, teacher_out)
    assert set(terms) == {"feat", "ce"}
    terms["ce"].backward(retain_graph=True)
    student = method.student
    assert student.fc.weight.grad is not None and student.fc.weight.grad.abs().sum() > 0
    backbone = [p for name, p in student.named_parameters() if not name.startswith("fc.")]
    assert all(p.grad is None for p in backbone)
    assert all(p.grad is None for p in method.projectors.parameters())
    student.zero_grad(set_to_none=True)
    terms["feat"].backward()
    assert student.fc.weight.grad is None  # the head learns from CE only
    assert all(p.grad is not None for p in backbone)


@pytest.mark.parametrize("name", ["featkd-ce", "base-fkd"])
def test_without_detach_ce_reaches_the_backbone_and_base_fkd_adds_kd(batch, name):
    torch.manual_seed(0)
    images, labels = batch
    teacher, student = _model("cifar_resnet14"), _model("cifar_resnet8")
    options = {"num_pairs": 3}
    if name == "featkd-ce":  # auto alignment probes data; name the Q layers instead
        options |= {"teacher_layers": ["layer2.0", "layer2.1", "layer3.1"]}
    method = _method(name, teacher, student, images, **options)
    assert method.config.detach_head is False and method.detach_layer is None
    method.train()
    teacher_out = method.teacher_outputs(images)
    _, terms = method(images, labels, STEP, teacher_out)
    expected = {"feat", "ce", "kd"} if name == "base-fkd" else {"feat", "ce"}
    assert set(terms) == expected
    terms["ce"].backward(retain_graph=True)
    backbone = [p for n, p in student.named_parameters() if not n.startswith("fc.")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone if p.dim() > 1)
    if name == "base-fkd":
        assert method.config.w_kd == 1.0 and method.config.align == "stages"
        with torch.no_grad():
            teacher_logits = teacher.eval()(images)
        assert torch.allclose(teacher_out[-1], teacher_logits)
        logits = student(images)
        assert terms["kd"].item() == pytest.approx(losses.kd(logits, teacher_logits, 4.0).item(), rel=1e-4)


def test_base_fkd_logs_its_three_terms_by_name(runner, tmp_path, teacher_run):
    out = tmp_path / "base"
    result = runner.invoke(app, distill_args(teacher_run, "base-fkd", out, "--set", "method.num_pairs=3"))
    assert result.exit_code == 0, result.output
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert {"loss_feat", "loss_ce", "loss_kd"} <= set(row)
    assert row["loss"] == pytest.approx(row["loss_feat"] + row["loss_ce"] + row["loss_kd"])
    method = yaml.safe_load((out / "recipe.yaml").read_text())["method"]
    assert method["name"] == "featkd" and method["detach_head"] is False and method["w_kd"] == 1.0


def test_featkd_loss_is_mean_of_pairwise_mse(batch):
    torch.manual_seed(0)
    images, labels = batch
    teacher, student = _model("cifar_wrn_16_2"), _model("cifar_resnet8")
    method = _method(
        "featkd",
        teacher,
        student,
        images,
        align="manual",
        teacher_layers=["block2", "block3.layer.1"],
        student_layers=["layer1.0", "layer3.0"],
        w_feat=2.0,
    )
    method.eval()
    teacher_out = method.teacher_outputs(images)
    # block2 of the teacher is 16x16 (at 32 px: 8x8 here) vs 16x16 student layer1.0: student pooled.
    assert teacher_out[0].shape == (8, 64, 8, 8) and teacher_out[1].shape == (8, 128, 4, 4)
    with FeatureTap(student, ["layer1.0", "layer3.0"]) as tap:
        student(images)
    first = method.projectors[0](F.adaptive_avg_pool2d(tap.features["layer1.0"], 8))
    second = method.projectors[1](tap.features["layer3.0"])
    expected = 2.0 * (F.mse_loss(first, teacher_out[0]) + F.mse_loss(second, teacher_out[1])) / 2
    _, terms = method(images, labels, STEP, teacher_out)
    torch.testing.assert_close(terms["feat"], expected)
    assert all(p.bias is None for p in method.projectors)


def test_featkd_vit_tokens_are_pooled_to_the_smaller_count():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    teacher = _model("test_vit", img_size=32)  # 2x2 patches + cls = 5 tokens of 64
    student = _model("test_vit", img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)  # 17 of 32
    method = _method("featkd", teacher, student, images, num_pairs=2)
    assert isinstance(method.projectors[0], torch.nn.Conv1d) and method.projectors[0].in_channels == 32
    teacher_out = method.teacher_outputs(images)
    assert teacher_out[0].shape == (2, 64, 5)
    _, terms = method(images, torch.tensor([0, 1]), STEP, teacher_out)
    sum(terms.values()).backward()
    assert method.student.blocks[0].mlp.fc1.weight.grad is not None


# ---- fitnet ---------------------------------------------------------------------------------------


def test_fitnet_hint_term(batch):
    torch.manual_seed(0)
    images, labels = batch
    teacher, student = _model("cifar_resnet14"), _model("cifar_resnet8")
    method = _method("fitnet", teacher, student, images)
    assert method.config.w_hint == 100.0
    assert (method.teacher_layer, method.student_layer) == ("layer2.1", "layer2.0")  # middle stage ends
    method.eval()
    teacher_out = method.teacher_outputs(images)
    with FeatureTap(teacher, ["layer2.1"]) as tap, torch.no_grad():
        teacher(images)
    torch.testing.assert_close(teacher_out, tap.features["layer2.1"])
    with FeatureTap(student, ["layer2.0"]) as tap:
        logits = student(images)
    expected = 100.0 * F.mse_loss(method.connector(tap.features["layer2.0"]), teacher_out)
    out, terms = method(images, labels, STEP, teacher_out)
    torch.testing.assert_close(terms["hint"], expected)
    torch.testing.assert_close(terms["ce"], F.cross_entropy(logits, labels))
    torch.testing.assert_close(out, logits)


def test_manual_alignment_needs_both_sides(batch):
    images, _ = batch
    with pytest.raises(UserError, match="--align manual needs both teacher and student layers"):
        _method(
            "featkd",
            _model("cifar_resnet14"),
            _model("cifar_resnet8"),
            images,
            align="manual",
            teacher_layers=["layer2.1"],
        )
    with pytest.raises(UserError, match="pairs layers one-to-one"):
        _method(
            "featkd",
            _model("cifar_resnet14"),
            _model("cifar_resnet8"),
            images,
            align="manual",
            teacher_layers=["layer2.1"],
            student_layers=["layer1.0", "layer2.0"],
        )


# ---- distill end to end ---------------------------------------------------------------------------


def distill_args(teacher_run, method: str, out, *extra: str) -> list[str]:
    """``kdcompress distill`` of cifar_resnet8 from the tiny cifar_resnet14 teacher on tiny digits."""
    args = ["distill", "--teacher", "cifar_resnet14", "--teacher-weights", str(teacher_run)]
    return [*args, "--student", "cifar_resnet8", "--method", method, "--out", str(out), *TINY, *extra]


def test_align_auto_writes_probed_layers_to_the_recipe(runner, tmp_path, teacher_run):
    out = tmp_path / "auto"
    args = distill_args(teacher_run, "featkd", out, "--align", "auto", "--set", "method.probe_samples=100")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    method = yaml.safe_load((out / "recipe.yaml").read_text())["method"]
    assert method["align"] == "auto" and method["num_pairs"] == 3  # the student has 3 layers past its stem
    candidates = ["relu", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1"]
    chosen = method["teacher_layers"]
    assert len(chosen) == 3 and chosen == sorted(chosen, key=candidates.index)
    assert method["student_layers"] == ["layer1.0", "layer2.0", "layer3.0"]
    assert "teacher_layer_quality" in (out / "report.md").read_text()
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["loss"] == pytest.approx(row["loss_feat"] + row["loss_ce"])


def test_blockkd_distill_exports_the_plain_student(runner, tmp_path, teacher_run):
    out = tmp_path / "blockkd"
    args = distill_args(teacher_run, "blockkd", out)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    keys = set(load_file(out / "student.safetensors"))
    assert keys == set(_model("cifar_resnet8").state_dict())
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert {"loss_task", "loss_distill", "loss_cross"} <= set(row)
    assert yaml.safe_load((out / "recipe.yaml").read_text())["method"]["num_stages"] == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--align", "manual"], "--align manual needs both teacher and student layers"),
        (
            [
                "--align",
                "manual",
                "--set",
                "method.teacher_layers=[layer2.9]",
                "--set",
                "method.student_layers=[layer2]",
            ],
            "Layer 'layer2.9' is not a module of the teacher",
        ),
        (["--align", "sideways"], "align"),
    ],
    ids=["manual-without-layers", "bad-layer-name", "bad-align"],
)
def test_feature_method_user_errors_exit_2(runner, tmp_path, teacher_run, extra, message):
    out = tmp_path / "bad"
    args = distill_args(teacher_run, "featkd", out, *extra)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output and not out.exists()
