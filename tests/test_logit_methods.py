"""The logit methods (dkd, nkd, sdd and its aliases, luminet): weighted terms, warm-ups, configs, SDD
heads on several model families, LumiNet's global statistics, and a 1-epoch CLI run of each."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from kdcompress import losses
from kdcompress.cli import app
from kdcompress.errors import UserError
from kdcompress.methods import StepProgress, method_info, resolve_method
from kdcompress.methods.sdd import BASE_DEFAULTS, cell_head, check_local_head

NUM_CLASSES = 5


def tiny_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, NUM_CLASSES))


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 2, 2, generator=gen)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    return images, labels


def build(name: str, options: dict, images: torch.Tensor, student=None, teacher=None):
    cls, config = resolve_method(name, options)
    student = student if student is not None else tiny_net(1)
    teacher = teacher if teacher is not None else tiny_net(2)
    return cls.build(config, student, teacher, images)


def run_step(method, images, labels, progress):
    teacher_out = method.teacher_outputs(images)
    return method(images, labels, progress, teacher_out), teacher_out


# --------------------------------------------------------------------------------------------------
# terms = the hand-assembled combination of kdcompress.losses with the configured weights
# --------------------------------------------------------------------------------------------------


def test_dkd_terms_and_epoch_warmup(batch):
    images, labels = batch
    method = build("dkd", {"alpha": 2.0, "beta": 6.0, "temperature": 3.0, "w_ce": 0.5}, images)
    (logits, terms), teacher = run_step(
        method, images, labels, StepProgress(epoch=5, step=3, steps_per_epoch=10)
    )
    assert set(terms) == {"ce", "dkd"}
    torch.testing.assert_close(terms["ce"], 0.5 * F.cross_entropy(logits, labels))
    # epoch 5 of a 20-epoch warm-up: 0.25 * (alpha * TCKD + beta * NCKD)
    expected = 0.25 * losses.dkd(logits, teacher, labels, alpha=2.0, beta=6.0, temperature=3.0)
    torch.testing.assert_close(terms["dkd"], expected)
    (_, late), _ = run_step(method, images, labels, StepProgress(epoch=25, step=0, steps_per_epoch=10))
    torch.testing.assert_close(late["dkd"], 4.0 * expected)


def test_dkd_per_step_warmup(batch):
    images, labels = batch
    method = build("dkd", {"warmup_per_step": True}, images)
    (logits, terms), teacher = run_step(
        method, images, labels, StepProgress(epoch=1, step=4, steps_per_epoch=10)
    )
    # half an epoch done after step index 4 of 10: 0.5 / 20
    expected = (0.5 / 20) * losses.dkd(logits, teacher, labels, alpha=1.0, beta=8.0, temperature=4.0)
    torch.testing.assert_close(terms["dkd"], expected)


def test_nkd_terms(batch):
    images, labels = batch
    options = {"gamma": 1.2, "temperature": 2.0, "w_ce": 0.7, "w_nkd": 2.0}
    method = build("nkd", options, images)
    (logits, terms), teacher = run_step(method, images, labels, StepProgress(1, 0, 10))
    assert set(terms) == {"ce", "nkd"}
    torch.testing.assert_close(terms["ce"], 0.7 * F.cross_entropy(logits, labels))
    torch.testing.assert_close(
        terms["nkd"], 2.0 * losses.nkd(logits, teacher, labels, gamma=1.2, temperature=2.0)
    )
    ramped = build("nkd", {"warmup": 4}, images)
    (logits, terms), teacher = run_step(ramped, images, labels, StepProgress(1, 0, 10))
    torch.testing.assert_close(terms["nkd"], 0.25 * losses.nkd(logits, teacher, labels))


def test_luminet_terms(batch):
    images, labels = batch
    method = build("luminet", {"alpha": 3.0, "temperature": 2.0, "w_ce": 1.5, "warmup": 10}, images)
    (logits, terms), teacher = run_step(method, images, labels, StepProgress(2, 0, 10))
    assert set(terms) == {"ce", "luminet"}
    torch.testing.assert_close(terms["ce"], 1.5 * F.cross_entropy(logits, labels))
    torch.testing.assert_close(terms["luminet"], 0.2 * 9.0 * losses.luminet(logits, teacher, temperature=2.0))


def test_luminet_global_stats_on_one_process_equals_per_device(batch):
    images, labels = batch
    results = []
    for global_stats in (False, True):
        method = build("luminet", {"global_stats": global_stats}, images)
        (_, terms), _ = run_step(method, images, labels, StepProgress(30, 0, 10))
        method.zero_grad()
        terms["luminet"].backward()
        results.append((terms["luminet"].detach(), [p.grad.clone() for p in method.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _luminet_rank(rank: int, world: int, port: int, folder: str) -> None:
    import torch.distributed as dist

    from kdcompress.methods.luminet import LumiNet, LumiNetConfig

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        data = torch.load(Path(folder) / "data.pt")
        share = data["images"].shape[0] // world
        window = slice(rank * share, (rank + 1) * share)
        student = nn.Sequential(nn.Flatten(), nn.Linear(12, NUM_CLASSES))
        student.load_state_dict(data["student"])
        teacher = nn.Sequential(nn.Flatten(), nn.Linear(12, NUM_CLASSES))
        teacher.load_state_dict(data["teacher"])
        method = LumiNet(student, teacher, LumiNetConfig(global_stats=True), data["images"][:2])
        images, labels = data["images"][window], data["labels"][window]
        _, terms = method(images, labels, StepProgress(30, 0, 1), method.teacher_outputs(images))
        terms["luminet"].backward()
        grads = torch.cat([p.grad.flatten() for p in student.parameters()])
        dist.all_reduce(grads)
        grads /= world  # what DDP's gradient averaging does
        if rank == 0:
            torch.save({"loss": terms["luminet"].detach(), "grad": grads}, Path(folder) / "out.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(sys.platform != "linux", reason="forks two gloo processes")
def test_luminet_global_stats_under_two_processes_match_the_global_batch(tmp_path):
    import torch.multiprocessing as mp

    gen = torch.Generator().manual_seed(3)
    images = torch.randn(8, 3, 2, 2, generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (8,), generator=gen)
    student, teacher = tiny_net(1), tiny_net(2)
    torch.save(
        {
            "images": images,
            "labels": labels,
            "student": student.state_dict(),
            "teacher": teacher.state_dict(),
        },
        tmp_path / "data.pt",
    )
    # fork: the children need nothing re-imported, so the test stays fast
    context = mp.start_processes(
        _luminet_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False, start_method="fork"
    )
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two gloo processes did not finish within 120 s")
    got = torch.load(tmp_path / "out.pt")
    # the same loss and gradient on one process over the whole batch
    zs = student(images)
    expected = 31.0**2 * losses.luminet(zs, teacher(images).detach(), temperature=4.0)
    expected.backward()
    torch.testing.assert_close(got["loss"], expected.detach())
    torch.testing.assert_close(got["grad"], torch.cat([p.grad.flatten() for p in student.parameters()]))


# --------------------------------------------------------------------------------------------------
# SDD
# --------------------------------------------------------------------------------------------------


def cifar_pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    student = timm.create_model("cifar_resnet8", num_classes=NUM_CLASSES)
    teacher = timm.create_model("cifar_resnet8", num_classes=NUM_CLASSES)
    return student, teacher


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("sd-kd", {"scales": [1, 2]}),
        ("sd-dkd", {"beta": 6.0}),
        ("sd-nkd", {"rule": "paper", "complementary_weight": 3.0}),
    ],
)
def test_sdd_terms(name, options):
    student, teacher = cifar_pair()
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 3])
    method = build(name, options, images, student, teacher)
    cfg = method.config
    method.train()
    progress = StepProgress(epoch=5, step=0, steps_per_epoch=10)
    teacher_local = method.teacher_outputs(images)
    assert not teacher_local.is_inference() and not teacher_local.requires_grad
    logits, terms = method(images, labels, progress, teacher_local)
    assert set(terms) == {"ce", "sdd"}

    # by hand: the zoo's head is its Linear classifier
    with torch.no_grad():
        expected_teacher = losses.local_logits(
            teacher.forward_features(images), teacher.get_classifier(), cfg.scales, cfg.pooling
        )
    torch.testing.assert_close(teacher_local, expected_teacher)
    student_local = losses.local_logits(
        student.forward_features(images), student.get_classifier(), cfg.scales, cfg.pooling
    )
    base = BASE_DEFAULTS[cfg.base]
    ramp = min(5 / base["warmup"], 1.0) if base["warmup"] else 1.0
    extra = {"kd": {}, "dkd": {"alpha": 1.0, "beta": 6.0}, "nkd": {"gamma": 8.0}}[cfg.base]
    expected = losses.sdd(
        student_local,
        expected_teacher,
        labels,
        base=cfg.base,
        temperature=4.0,
        complementary_weight=options.get("complementary_weight", 2.0),
        rule=options.get("rule", "code"),
        **extra,
    )
    torch.testing.assert_close(terms["sdd"], ramp * base["w_sdd"] * expected)
    torch.testing.assert_close(terms["ce"], base["w_ce"] * F.cross_entropy(logits, labels))
    torch.testing.assert_close(logits, student_local[:, :, 0])
    assert teacher_local.shape == (4, NUM_CLASSES, sum(s * s for s in cfg.scales))


@pytest.mark.parametrize("pooling", ["pyramid", "direct"])
def test_sdd_pooling_reaches_teacher_and_student_on_7x7_maps(pooling):
    # 28x28 inputs give cifar_resnet8 7x7 maps, where the two poolings differ. The head check passes
    # with either (it tests the head on the global average), and both sides use the configured pooling.
    student, teacher = cifar_pair()
    images = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 1, 2])
    method = build("sd-kd", {"pooling": pooling, "scales": [1, 2]}, images, student, teacher)
    assert student.forward_features(images).shape[-2:] == (7, 7)
    method.train()
    teacher_local = method.teacher_outputs(images)
    _, terms = method(images, labels, StepProgress(epoch=0, step=0, steps_per_epoch=10), teacher_local)
    with torch.no_grad():
        t_map = teacher.forward_features(images)
        expected_teacher = losses.local_logits(t_map, teacher.get_classifier(), (1, 2), pooling)
        other_teacher = losses.local_logits(
            t_map, teacher.get_classifier(), (1, 2), "direct" if pooling == "pyramid" else "pyramid"
        )
    torch.testing.assert_close(teacher_local, expected_teacher)
    assert not torch.allclose(teacher_local, other_teacher, rtol=1e-4, atol=1e-4)
    student_local = losses.local_logits(
        student.forward_features(images), student.get_classifier(), (1, 2), pooling
    )
    expected = losses.sdd(student_local, expected_teacher, labels, base="kd", temperature=4.0)
    torch.testing.assert_close(terms["sdd"], 0.9 * expected)


def test_aliases_resolve_with_their_base_defaults():
    expected = {
        "sd-kd": {"base": "kd", "temperature": 4.0, "w_ce": 0.1, "w_sdd": 0.9, "warmup": 0.0, "alpha": None},
        "sd-dkd": {
            "base": "dkd",
            "temperature": 4.0,
            "alpha": 1.0,
            "beta": 8.0,
            "w_ce": 1.0,
            "w_sdd": 1.0,
            "warmup": 20.0,
            "gamma": None,
        },
        "sd-nkd": {
            "base": "nkd",
            "temperature": 4.0,
            "gamma": 8.0,
            "w_ce": 1.0,
            "w_sdd": 1.0,
            "warmup": 20.0,
            "beta": None,
        },
    }
    for alias, values in expected.items():
        assert method_info(alias).target == "sdd"
        cls, config = resolve_method(alias, {})
        assert cls.name == "sdd"
        dumped = config.model_dump()
        assert {k: dumped[k] for k in values} == values
        assert dumped["scales"] == [1, 2, 4] and dumped["rule"] == "code"
        assert dumped["pooling"] == "pyramid"
    # explicit options beat the base defaults; the resolved dump round-trips
    _, config = resolve_method("SD-DKD", {"warmup": 5, "beta": 2})
    assert (config.warmup, config.beta, config.w_ce) == (5.0, 2.0, 1.0)
    _, again = resolve_method("sdd", config.model_dump())
    assert again == config


def test_option_errors_are_user_errors():
    with pytest.raises(
        UserError,
        match=r"Method 'dkd' has no option 'betta'; its options are: alpha, beta, standardize_logits",
    ):
        resolve_method("dkd", {"betta": 6})
    with pytest.raises(UserError, match=r"Method 'luminet' option 'temperature'"):
        resolve_method("luminet", {"temperature": 0})
    with pytest.raises(UserError, match=r"option 'gamma'.*only base 'nkd' uses it"):
        resolve_method("sd-kd", {"gamma": 2.0})
    with pytest.raises(UserError, match=r"option 'base'"):
        resolve_method("sdd", {"base": "fitnet"})
    with pytest.raises(UserError, match=r"scales must start with 1"):
        resolve_method("sd-kd", {"scales": [2, 4]})
    # The default pyramid pooling takes every grid from the 4x4 one; other scales need direct pooling.
    with pytest.raises(UserError, match=r"option 'pooling'.*scales must divide 4 \(got \[1, 3\]\)"):
        resolve_method("sd-kd", {"scales": [1, 3]})
    assert resolve_method("sd-kd", {"scales": [1, 3], "pooling": "direct"})[1].scales == [1, 3]
    with pytest.raises(UserError, match=r"option 'pooling'.*'pyramid' or 'direct'"):
        resolve_method("sd-kd", {"pooling": "max"})


@pytest.mark.parametrize(
    ("arch", "size"),
    [
        ("cifar_resnet8", 16),
        ("resnet18", 64),
        ("mobilenetv3_small_050", 64),
        ("test_efficientnet", 64),
        ("test_convnext", 64),
    ],
)
def test_region_zero_equals_the_normal_logits(arch, size):
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=NUM_CLASSES).eval()
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    head = cell_head(model, "student")
    check_local_head(model, head, images, "student")  # the check SDD runs when it is built
    with torch.no_grad():
        local = losses.local_logits(model.forward_features(images), head, (1, 2, 4))
        expected = model(images)
    assert local.shape == (2, NUM_CLASSES, 21)
    torch.testing.assert_close(local[:, :, 0], expected, rtol=1e-4, atol=1e-4)


def test_models_without_a_usable_head_are_clear_errors():
    images = torch.randn(2, 3, 16, 16)
    with pytest.raises(UserError, match=r"forward_features\(\)"):
        cell_head(nn.Sequential(nn.Flatten(), nn.Linear(768, 3)), "student")

    class FeaturesOnly(nn.Module):
        def forward_features(self, x):
            return x

    with pytest.raises(UserError, match=r"forward_head\(\) or a linear get_classifier\(\)"):
        cell_head(FeaturesOnly(), "teacher")

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)

        def forward_features(self, x):
            return x.flatten(2).transpose(1, 2)  # [B, N, C] like a ViT

        def get_classifier(self):
            return self.fc

        def forward(self, x):
            return self.fc(self.forward_features(x).mean(1))

    tokens = Tokens()
    with pytest.raises(UserError, match=r"\[B, C, H, W\] feature map.*\(2, 256, 3\)"):
        check_local_head(tokens, cell_head(tokens), images, "student")

    max_pooled = timm.create_model("cifar_resnet8", num_classes=3)
    max_pooled.forward = lambda x: max_pooled.get_classifier()(max_pooled.forward_features(x).amax((2, 3)))
    with pytest.raises(UserError, match=r"not global average pooling"):
        check_local_head(max_pooled, cell_head(max_pooled), images, "teacher")

    student, _ = cifar_pair()
    cls, config = resolve_method("sd-kd", {})
    with pytest.raises(UserError, match=r"teacher '.*' to expose forward_features"):
        cls(student, nn.Sequential(nn.Flatten(), nn.Linear(768, NUM_CLASSES)), config, images)


# --------------------------------------------------------------------------------------------------
# end to end: 1 epoch of `kdcompress distill` on tiny digits
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "term", "resolved"),
    [
        ("dkd", "dkd", {"name": "dkd", "beta": 8.0}),
        ("nkd", "nkd", {"name": "nkd", "gamma": 1.5}),
        ("sd-kd", "sdd", {"name": "sdd", "base": "kd", "w_ce": 0.1}),
        ("sd-dkd", "sdd", {"name": "sdd", "base": "dkd", "warmup": 20.0}),
        ("luminet", "luminet", {"name": "luminet", "alpha": 31.0}),
        ("dist", "dist", {"name": "dist", "temperature": 1.0, "beta": 1.0}),
        ("kd-ls", "kd", {"name": "kd", "standardize_logits": True, "temperature": 2.0, "w_kd": 9.0}),
        ("dkd-ls", "dkd", {"name": "dkd", "standardize_logits": True, "alpha": 9.0, "beta": 72.0}),
    ],
)
def test_distill_one_epoch_on_digits(runner, teacher_run, tmp_path, method, term, resolved):
    out = tmp_path / method
    result = runner.invoke(
        app,
        [
            "distill",
            "--teacher", "cifar_resnet14",
            "--teacher-weights", str(teacher_run),
            "--student", "cifar_resnet8",
            "--method", method,
            "--data", "digits",
            "--epochs", "1",
            "--batch-size", "64",
            "--device", "cpu",
            "--out", str(out),
            "--set", "data.train_limit=128",
            "--set", "data.val_limit=64",
            "--quiet",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    assert {"loss_ce", f"loss_{term}"} <= set(rows[0])
    assert all(torch.isfinite(torch.tensor(rows[0][k])) for k in ("loss_ce", f"loss_{term}"))
    recorded = yaml.safe_load((out / "recipe.yaml").read_text())["method"]
    assert {k: recorded[k] for k in resolved} == resolved
    # the recorded, fully resolved options validate again (what --resume does)
    name = recorded.pop("name")
    assert resolve_method(name, recorded)[1].model_dump(mode="json") == recorded
