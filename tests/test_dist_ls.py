"""DIST (the loss and the method) and logit standardisation (the function and the ``standardize_logits``
option every logit method has): values against literal references, invariances, numerics, and a short
end-to-end run."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F

from kdcompress import losses
from kdcompress.analysis.compare import CompareRequest, plan
from kdcompress.errors import UserError
from kdcompress.methods import StepProgress, all_methods, method_info, resolve_method

NUM_CLASSES = 5
LATE = StepProgress(epoch=30, step=0, steps_per_epoch=10)  # past every warm-up


# --------------------------------------------------------------------------------------------------
# literal references, written from the formulas in docs/methods.md (plain Python, no library helpers)
# --------------------------------------------------------------------------------------------------


def _softmax(row, temperature):
    top = max(v / temperature for v in row)
    exps = [math.exp(v / temperature - top) for v in row]
    return [e / sum(exps) for e in exps]


def _pearson(a, b, eps=1e-8):
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    ca = [v - mean_a for v in a]
    cb = [v - mean_b for v in b]
    dot = sum(x * y for x, y in zip(ca, cb, strict=True))
    return dot / (math.sqrt(sum(x * x for x in ca)) * math.sqrt(sum(y * y for y in cb)) + eps)


def _ref_dist(zs, zt, beta, gamma, temperature):
    """The authors' DIST: T^2 * (beta * (1 - mean_rows rho) + gamma * (1 - mean_columns rho))."""
    ps = [_softmax(row, temperature) for row in zs]
    pt = [_softmax(row, temperature) for row in zt]
    inter = 1.0 - sum(_pearson(a, b) for a, b in zip(ps, pt, strict=True)) / len(ps)
    columns_s, columns_t = list(zip(*ps, strict=True)), list(zip(*pt, strict=True))
    intra = 1.0 - sum(_pearson(a, b) for a, b in zip(columns_s, columns_t, strict=True)) / len(columns_s)
    return temperature**2 * (beta * inter + gamma * intra)


def _ref_standardize_row(row, eps=1e-7):
    mean = sum(row) / len(row)
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))  # unbiased
    return [(v - mean) / (std + eps) for v in row]


def _zscore(z: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Logit standardisation spelled out with tensor operations: (z - mean) / (unbiased std + 1e-7)."""
    centred = z - z.mean(dim=dim, keepdim=True)
    std = (centred.pow(2).sum(dim=dim, keepdim=True) / (z.shape[dim] - 1)).sqrt()
    return centred / (std + 1e-7)


def _t(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


ZS = [[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 0.5], [2.0, 2.0, -2.0, 1.0]]
ZT = [[2.0, 1.0, -0.5, 0.0], [0.5, 0.25, 2.5, 1.0], [3.0, 0.0, -1.0, 1.5]]


def _random_logits(batch=6, classes=7, scale=3.0, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    zs = torch.randn(batch, classes, generator=gen, dtype=dtype) * scale
    zt = torch.randn(batch, classes, generator=gen, dtype=dtype) * scale
    return zs, zt


# --------------------------------------------------------------------------------------------------
# DIST: values
# --------------------------------------------------------------------------------------------------


def test_dist_two_by_two_by_hand():
    # With two classes each row is [p, 1 - p]; centred it is +-(p - 1/2) * [1, -1], so the Pearson
    # correlation of two rows is the sign of (p_s - 1/2)(p_t - 1/2). With two samples each column is
    # likewise +-[1, -1] / 2 times its spread, so the correlation is the sign of the two differences.
    # The 1e-8 in the denominator moves these values by about 1e-6 (the columns' spreads are small).
    zs = _t([[1.0, 0.0], [0.0, 1.0]])
    # rows: sample 0 disagrees (student favours class 0, teacher class 1), sample 1 agrees -> inter = 1;
    # columns: both decrease from sample 0 to sample 1 -> intra = 0.
    zt = _t([[0.0, 2.0], [0.0, 3.0]])
    torch.testing.assert_close(losses.dist(zs, zt), _t(1.0), rtol=0, atol=1e-5)
    torch.testing.assert_close(losses.dist(zs, zt, beta=2.0, gamma=3.0), _t(2.0), rtol=0, atol=1e-5)
    # swap the teacher's samples: inter stays 1, the columns now move the opposite way -> intra = 2.
    zt = _t([[0.0, 3.0], [0.0, 2.0]])
    torch.testing.assert_close(losses.dist(zs, zt, beta=2.0, gamma=3.0), _t(2.0 + 6.0), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("beta", "gamma", "temperature", "expected"),
    [
        (1.0, 1.0, 1.0, 0.555563082662486),
        (0.5, 2.0, 1.0, 0.484563494463687),
        (1.0, 1.0, 4.0, 7.17292180241457),
        (0.5, 2.0, 4.0, 7.19016272947009),
    ],
)
def test_dist_three_by_four_against_the_literal_formula(beta, gamma, temperature, expected):
    # ``expected`` is _ref_dist on ZS, ZT written out, so the test holds even if the reference changes.
    assert _ref_dist(ZS, ZT, beta, gamma, temperature) == pytest.approx(expected, rel=1e-12)
    got = losses.dist(_t(ZS), _t(ZT), beta=beta, gamma=gamma, temperature=temperature)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(expected, rel=1e-12)
    got32 = losses.dist(_t(ZS, torch.float32), _t(ZT, torch.float32), beta, gamma, temperature)
    assert got32.dtype == torch.float32 and got32.item() == pytest.approx(expected, rel=1e-5)


def test_dist_random_against_the_literal_formula():
    zs, zt = _random_logits(batch=5, classes=9, seed=3)
    got = losses.dist(zs, zt, beta=1.5, gamma=0.5, temperature=2.0)
    assert got.item() == pytest.approx(_ref_dist(zs.tolist(), zt.tolist(), 1.5, 0.5, 2.0), rel=1e-12)


def test_dist_is_zero_for_identical_inputs():
    zs, _ = _random_logits()
    for temperature in (1.0, 4.0):
        # not exactly 0: the 1e-8 in the denominator leaves about 1e-8 / |p - mean p|^2
        assert abs(losses.dist(zs, zs.clone(), temperature=temperature).item()) < 1e-5
    # and positively correlated is not enough: the probabilities must match in shape
    assert losses.dist(zs, -zs).item() > 1.0


def test_dist_weights_split_the_two_terms():
    zs, zt = _random_logits(seed=1)
    inter = losses.dist(zs, zt, beta=1.0, gamma=0.0, temperature=3.0)
    intra = losses.dist(zs, zt, beta=0.0, gamma=1.0, temperature=3.0)
    torch.testing.assert_close(losses.dist(zs, zt, 2.0, 0.5, 3.0), 2.0 * inter + 0.5 * intra)
    assert 0 <= inter.item() / 9 <= 2 and 0 <= intra.item() / 9 <= 2  # 1 - rho, rho in [-1, 1]


def test_dist_temperature_squared_scaling():
    zs, zt = _random_logits(seed=2)
    for temperature in (0.5, 2.0, 4.0):
        scaled = losses.dist(zs / temperature, zt / temperature, temperature=1.0)
        torch.testing.assert_close(losses.dist(zs, zt, temperature=temperature), temperature**2 * scaled)


def test_dist_ignores_a_constant_added_to_each_row():
    zs, zt = _random_logits(seed=4)
    gen = torch.Generator().manual_seed(5)
    shift_s = torch.randn(zs.shape[0], 1, generator=gen, dtype=zs.dtype) * 10
    shift_t = torch.randn(zt.shape[0], 1, generator=gen, dtype=zt.dtype) * 10
    for temperature in (1.0, 4.0):
        torch.testing.assert_close(
            losses.dist(zs + shift_s, zt + shift_t, temperature=temperature),
            losses.dist(zs, zt, temperature=temperature),
        )


def test_dist_batch_of_one_has_a_constant_intra_term():
    zs, zt = _random_logits(batch=1)
    # one sample: every column is constant, its correlation 0, so intra = 1 whatever the logits
    torch.testing.assert_close(losses.dist(zs, zt, beta=0.0, gamma=1.0), _t(1.0))


# --------------------------------------------------------------------------------------------------
# DIST: numerics and input checks
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("magnitude", [1.0, 30.0, 1e3])
def test_dist_gradients_are_finite(magnitude):
    zs, zt = _random_logits(scale=magnitude, seed=6, dtype=torch.float32)
    zs.requires_grad_(True)
    loss = losses.dist(zs, zt, temperature=4.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zs.grad).all()


def test_dist_gradients_are_finite_on_uniform_predictions():
    # constant rows give uniform probabilities: a zero centred vector, whose norm has no derivative
    zs = torch.zeros(3, 4, requires_grad=True)
    loss = losses.dist(zs, torch.zeros(3, 4))
    loss.backward()
    torch.testing.assert_close(loss.detach(), torch.tensor(2.0))  # both correlations 0
    assert torch.isfinite(zs.grad).all()


def test_dist_passes_gradcheck():
    zs, zt = _random_logits(batch=4, classes=5, seed=7)
    zs.requires_grad_(True)
    zt.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: losses.dist(a, b, 1.0, 2.0, 2.0), (zs, zt))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dist_half_precision_is_computed_in_float32(dtype):
    zs, zt = _random_logits(dtype=torch.float32, seed=8)
    got = losses.dist(zs.to(dtype), zt.to(dtype), temperature=4.0)
    assert got.dtype == torch.float32
    expected = losses.dist(zs.to(dtype).float(), zt.to(dtype).float(), temperature=4.0)
    torch.testing.assert_close(got, expected)


def test_dist_float64_stays_float64():
    zs, zt = _random_logits(seed=9)
    got = losses.dist(zs.float(), zt)  # the wider of the two wins
    assert got.dtype == torch.float64


@pytest.mark.parametrize(
    ("student", "teacher", "error", "match"),
    [
        (torch.zeros(4), torch.zeros(4), ValueError, "expected 2-D logits"),
        (torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), ValueError, "expected 2-D logits"),
        (torch.zeros(2, 3), torch.zeros(2, 4), ValueError, "differ in shape"),
        (torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long), TypeError, "floating"),
        ([[0.0, 1.0]], torch.zeros(1, 2), TypeError, "must be tensors"),
    ],
)
def test_dist_input_checks(student, teacher, error, match):
    with pytest.raises(error, match=match):
        losses.dist(student, teacher)


def test_dist_rejects_a_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature must be positive"):
        losses.dist(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0.0)


# --------------------------------------------------------------------------------------------------
# standardize_logits
# --------------------------------------------------------------------------------------------------


def test_standardize_matches_the_literal_formula():
    got = losses.standardize_logits(_t(ZS))
    expected = _t([_ref_standardize_row(row) for row in ZS])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(losses.standardize_logits(_t(ZT)), _zscore(_t(ZT)), rtol=1e-12, atol=1e-12)
    # every standardised row has mean 0 and unbiased std 1 (up to the 1e-7)
    torch.testing.assert_close(got.mean(dim=1), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(got.std(dim=1), torch.ones(3, dtype=torch.float64), rtol=1e-6, atol=0)


def test_standardize_is_per_sample():
    zs, _ = _random_logits(seed=10)
    changed = zs.clone()
    changed[0] = changed[0] * 50 + 3
    before, after = losses.standardize_logits(zs), losses.standardize_logits(changed)
    torch.testing.assert_close(after[1:], before[1:])


def test_standardize_ignores_each_samples_scale_and_shift():
    zs, _ = _random_logits(seed=11)
    gen = torch.Generator().manual_seed(12)
    scale = torch.rand(zs.shape[0], 1, generator=gen, dtype=zs.dtype) * 10 + 0.1
    shift = torch.randn(zs.shape[0], 1, generator=gen, dtype=zs.dtype) * 100
    torch.testing.assert_close(
        losses.standardize_logits(scale * zs + shift), losses.standardize_logits(zs), rtol=1e-6, atol=1e-6
    )


def test_standardize_the_class_axis_of_local_logits():
    gen = torch.Generator().manual_seed(13)
    local = torch.randn(2, 6, 5, generator=gen, dtype=torch.float64)  # [B, K, N]
    torch.testing.assert_close(losses.standardize_logits(local, dim=1), _zscore(local, dim=1))


def test_standardize_constant_rows_are_zero_not_nan():
    z = torch.tensor([[3.0, 3.0, 3.0], [1.0, 2.0, 3.0]], requires_grad=True)
    out = losses.standardize_logits(z)
    torch.testing.assert_close(out[0], torch.zeros(3))  # 0 / (0 + 1e-7)
    out.sum().backward()
    assert torch.isfinite(z.grad).all()
    # without the epsilon the same row would be 0 / 0
    assert torch.isnan((z[0] - z[0].mean()) / z[0].std()).all()


def test_standardize_input_checks():
    with pytest.raises(TypeError, match="floating-point"):
        losses.standardize_logits(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 classes"):
        losses.standardize_logits(torch.zeros(4, 1))


# --------------------------------------------------------------------------------------------------
# the standardize_logits option of each logit method
# --------------------------------------------------------------------------------------------------


def _pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    student = timm.create_model("cifar_resnet8", num_classes=NUM_CLASSES)
    teacher = timm.create_model("cifar_resnet8", num_classes=NUM_CLASSES)
    return student, teacher


def _build(name: str, options: dict, images: torch.Tensor):
    student, teacher = _pair()
    cls, config = resolve_method(name, options)
    method = cls.build(config, student, teacher, images)
    method.train()
    return method


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return images, torch.tensor([0, 1, 2, 4])


def _plain(method, images, labels, student_logits, teacher_out, transform):
    """The method's distillation term computed by hand from kdcompress.losses on ``transform``ed logits."""
    cfg = method.config
    zs, zt = transform(student_logits), transform(teacher_out)
    name = method_info(method.name).target
    if name == "kd":
        return "kd", cfg.w_kd * losses.kd(zs, zt, cfg.temperature)
    if name == "dkd":
        return "dkd", losses.dkd(zs, zt, labels, cfg.alpha, cfg.beta, cfg.temperature)
    if name == "nkd":
        return "nkd", cfg.w_nkd * losses.nkd(zs, zt, labels, cfg.gamma, cfg.temperature)
    if name == "luminet":
        return "luminet", cfg.alpha**2 * losses.luminet(zs, zt, cfg.temperature)
    if name == "dist":
        return "dist", cfg.w_dist * losses.dist(zs, zt, cfg.beta, cfg.gamma, cfg.temperature)
    assert name == "sdd"
    return "sdd", cfg.w_sdd * losses.sdd(zs, zt, labels, **cfg.loss_options())


def _student_logits(method, images):
    """What the distillation loss sees from the student: its logits, or SDD's local logits."""
    if method_info(method.name).target != "sdd":
        return method.student(images)
    features = method.student.forward_features(images)
    cfg = method.config
    return losses.local_logits(features, method.student.get_classifier(), cfg.scales, cfg.pooling)


LS_METHODS = [
    ("kd", {"temperature": 2.0, "w_kd": 9.0}),
    ("dkd", {"alpha": 2.0, "beta": 6.0, "temperature": 3.0}),
    ("nkd", {"gamma": 1.5, "temperature": 2.0, "w_nkd": 2.0}),
    ("sd-kd", {"scales": [1, 2]}),
    ("luminet", {"alpha": 3.0, "temperature": 2.0, "warmup": 10}),
    ("dist", {"temperature": 4.0, "beta": 2.0, "gamma": 0.5}),
]


@pytest.mark.parametrize(("name", "options"), LS_METHODS, ids=[n for n, _ in LS_METHODS])
def test_standardize_option_applies_to_the_distillation_term_only(name, options):
    images, labels = _batch()
    results = {}
    for standardize in (False, True):
        method = _build(name, {**options, "standardize_logits": standardize}, images)
        teacher_out = method.teacher_outputs(images)
        logits, terms = method(images, labels, LATE, teacher_out)
        assert set(terms) == {"ce", method_info(name).target if name != "sd-kd" else "sdd"}
        # CE sees the raw logits, standardised or not
        torch.testing.assert_close(terms["ce"], method.config.w_ce * F.cross_entropy(logits, labels))
        transform = _zscore if standardize else (lambda z: z)
        term, expected = _plain(
            method, images, labels, _student_logits(method, images), teacher_out, transform
        )
        torch.testing.assert_close(terms[term], expected)
        results[standardize] = terms[term].detach()
    assert not torch.allclose(results[False], results[True]), "the option changes the loss"


@pytest.mark.parametrize(("name", "options"), LS_METHODS, ids=[n for n, _ in LS_METHODS])
def test_standardized_methods_ignore_the_teachers_logit_scale(name, options):
    # a per-sample affine map of the teacher's logits (a more or less confident teacher) leaves the
    # standardised loss unchanged; without standardisation it changes it
    images, labels = _batch()
    for standardize in (True, False):
        method = _build(name, {**options, "standardize_logits": standardize}, images)
        teacher_out = method.teacher_outputs(images)
        shape = (teacher_out.shape[0],) + (1,) * (teacher_out.dim() - 1)
        scale = torch.linspace(0.5, 3.0, shape[0]).reshape(shape)
        (_, terms), (_, rescaled) = (
            method(images, labels, LATE, teacher_out),
            method(images, labels, LATE, scale * teacher_out + 2.0),
        )
        term = next(k for k in terms if k != "ce")
        same = torch.allclose(terms[term], rescaled[term], rtol=1e-4, atol=1e-5)
        assert same == standardize, (name, standardize, terms[term], rescaled[term])


# --------------------------------------------------------------------------------------------------
# the dist method
# --------------------------------------------------------------------------------------------------


def test_dist_method_defaults_and_terms():
    info = method_info("dist")
    assert (info.kind, info.family, info.in_all, info.needs_teacher) == ("logit", "sgd-cosine", True, True)
    assert "Stronger Teacher" in info.paper
    config = resolve_method("dist", {})[1]
    assert config.model_dump() == {
        "standardize_logits": False,
        "beta": 1.0,
        "gamma": 1.0,
        "temperature": 1.0,
        "w_ce": 1.0,
        "w_dist": 1.0,
    }
    images, labels = _batch()
    method = _build("dist", {"w_ce": 0.5, "w_dist": 2.0}, images)
    teacher_out = method.teacher_outputs(images)
    assert not teacher_out.requires_grad
    logits, terms = method(images, labels, LATE, teacher_out)
    torch.testing.assert_close(terms["ce"], 0.5 * F.cross_entropy(logits, labels))
    torch.testing.assert_close(terms["dist"], 2.0 * losses.dist(logits, teacher_out))
    sum(terms.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in method.student.parameters())


@pytest.mark.parametrize(
    ("options", "match"),
    [({"temperature": 0}, "temperature"), ({"beta": -1}, "beta"), ({"w_dst": 1}, "no option 'w_dst'")],
)
def test_dist_method_rejects_bad_options(options, match):
    with pytest.raises(UserError, match=match):
        resolve_method("dist", options)


def test_compare_all_plans_dist(tmp_path):
    assert "dist" in all_methods()
    request = CompareRequest(
        students=("cifar_resnet8",),
        data="digits",
        out=tmp_path,
        methods=("all",),
        teacher="cifar_resnet14",
        teacher_weights=str(tmp_path / "teacher"),
    )
    runs = {run.method: run for run in plan(request)}
    assert runs["dist"].family == "sgd-cosine"
    assert runs["dist"].recipe().method.name == "dist"
    assert runs["dist"].argv()[:2] == ["kdcompress", "distill"]
