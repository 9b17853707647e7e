"""Tests for kdcompress.losses: hand-computed values, identities, SDD weighting, numerics."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdcompress.losses import _common, dkd, kd, local_logits, luminet, nkd, sdd

# --------------------------------------------------------------------------------------------------
# plain-Python references, spelled out from docs/methods.md (no torch, no library helpers)
# --------------------------------------------------------------------------------------------------


def _softmax(row, temperature=1.0):
    scaled = [v / temperature for v in row]
    top = max(scaled)
    exps = [math.exp(v - top) for v in scaled]
    total = sum(exps)
    return [e / total for e in exps]


def _kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True) if pi > 0)


def _ref_kd(zs, zt, temperature):
    per = [
        temperature**2 * _kl(_softmax(t, temperature), _softmax(s, temperature))
        for s, t in zip(zs, zt, strict=True)
    ]
    return sum(per) / len(per)


def _ref_tckd_nckd(s, t, y, temperature):
    ps, pt = _softmax(s, temperature), _softmax(t, temperature)
    bs, bt = [ps[y], 1.0 - ps[y]], [pt[y], 1.0 - pt[y]]
    tckd = temperature**2 * _kl(bt, bs)
    # q = softmax(z / T - 1000 * onehot(y))
    qs = _softmax([v / temperature - (1000.0 if k == y else 0.0) for k, v in enumerate(s)])
    qt = _softmax([v / temperature - (1000.0 if k == y else 0.0) for k, v in enumerate(t)])
    nckd = temperature**2 * _kl(qt, qs)
    return tckd, nckd


def _ref_dkd(zs, zt, ys, alpha, beta, temperature):
    per = []
    for s, t, y in zip(zs, zt, ys, strict=True):
        tckd, nckd = _ref_tckd_nckd(s, t, y, temperature)
        per.append(alpha * tckd + beta * nckd)
    return sum(per) / len(per)


def _ref_nkd(zs, zt, ys, gamma, temperature):
    per = []
    for s, t, y in zip(zs, zt, ys, strict=True):
        ps1, pt1 = _softmax(s), _softmax(t)
        target_term = -pt1[y] * math.log(ps1[y])
        s_non = [v for k, v in enumerate(s) if k != y]
        t_non = [v for k, v in enumerate(t) if k != y]
        qs, qt = _softmax(s_non, temperature), _softmax(t_non, temperature)
        non_term = -gamma * temperature**2 * sum(a * math.log(b) for a, b in zip(qt, qs, strict=True))
        per.append(target_term + non_term)
    return sum(per) / len(per)


def _ref_standardize(z):
    rows, cols = len(z), len(z[0])
    out = [[0.0] * cols for _ in range(rows)]
    for k in range(cols):
        column = [z[b][k] for b in range(rows)]
        mean = sum(column) / rows
        var = sum((v - mean) ** 2 for v in column) / rows  # biased
        for b in range(rows):
            out[b][k] = (z[b][k] - mean) / math.sqrt(var + 1e-5)
    return out


def _ref_luminet(zs, zt, temperature):
    hs, ht = _ref_standardize(zs), _ref_standardize(zt)
    per = [_kl(_softmax(t, temperature), _softmax(s, temperature)) for s, t in zip(hs, ht, strict=True)]
    return sum(per) / len(per)


ZS = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
ZT = [[2.0, 1.0, -0.5], [0.5, 0.25, 2.5]]
YS = [0, 2]


def _t(rows, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype)


# (dtype, relative tolerance against the plain-Python references): float64 inputs are computed in
# float64, so they must match the float64 Python arithmetic to near machine precision.
PRECISIONS = [(torch.float32, 1e-5), (torch.float64, 1e-12)]


def _random_logits(batch=8, classes=10, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    zs = torch.randn(batch, classes, generator=g) * scale
    zt = torch.randn(batch, classes, generator=g) * scale
    y = torch.randint(0, classes, (batch,), generator=g)
    return zs, zt, y


# --------------------------------------------------------------------------------------------------
# contract
# --------------------------------------------------------------------------------------------------


def test_signatures_match_contract():
    def defaults(fn):
        return {k: v.default for k, v in inspect.signature(fn).parameters.items()}

    assert defaults(kd) == {
        "student_logits": inspect._empty,
        "teacher_logits": inspect._empty,
        "temperature": 4.0,
    }
    d = defaults(dkd)
    assert list(d) == ["student_logits", "teacher_logits", "target", "alpha", "beta", "temperature"]
    assert (d["alpha"], d["beta"], d["temperature"]) == (1.0, 8.0, 4.0)
    n = defaults(nkd)
    assert list(n) == ["student_logits", "teacher_logits", "target", "gamma", "temperature"]
    assert (n["gamma"], n["temperature"]) == (1.5, 1.0)
    assert defaults(luminet)["temperature"] == 4.0
    assert tuple(defaults(local_logits)["scales"]) == (1, 2, 4)
    assert defaults(local_logits)["pooling"] == "pyramid"
    s = defaults(sdd)
    assert list(s) == [
        "student_local", "teacher_local", "target", "base", "temperature",
        "alpha", "beta", "gamma", "complementary_weight", "rule",
    ]  # fmt: skip
    assert (s["base"], s["temperature"], s["alpha"], s["beta"]) == ("kd", 4.0, 1.0, 8.0)
    assert (s["gamma"], s["complementary_weight"], s["rule"]) == (1.5, 2.0, "code")


# --------------------------------------------------------------------------------------------------
# hand-computed values
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "rel"), PRECISIONS)
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_hand_value(temperature, dtype, rel):
    got = kd(_t(ZS, dtype), _t(ZT, dtype), temperature=temperature)
    assert got.dtype == dtype and got.dim() == 0
    assert got.item() == pytest.approx(_ref_kd(ZS, ZT, temperature), rel=rel)


def test_kd_two_class_closed_form():
    # One sample, K = 2, T = 1: p_t = sigmoid(1), p_s = 1/2.
    a = 1.0 / (1.0 + math.exp(-1.0))
    expected = a * math.log(a / 0.5) + (1 - a) * math.log((1 - a) / 0.5)
    got = kd(_t([[0.0, 0.0]]), _t([[1.0, 0.0]]), temperature=1.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(("dtype", "rel"), PRECISIONS)
@pytest.mark.parametrize(
    ("alpha", "beta", "temperature"), [(1.0, 8.0, 4.0), (1.0, 1.0, 1.0), (0.5, 2.0, 2.0)]
)
def test_dkd_hand_value(alpha, beta, temperature, dtype, rel):
    got = dkd(_t(ZS, dtype), _t(ZT, dtype), torch.tensor(YS), alpha=alpha, beta=beta, temperature=temperature)
    assert got.dtype == dtype and got.dim() == 0
    assert got.item() == pytest.approx(_ref_dkd(ZS, ZT, YS, alpha, beta, temperature), rel=rel)


@pytest.mark.parametrize(("dtype", "rel"), PRECISIONS)
@pytest.mark.parametrize(("gamma", "temperature"), [(1.5, 1.0), (1.5, 4.0), (0.0, 2.0)])
def test_nkd_hand_value(gamma, temperature, dtype, rel):
    got = nkd(_t(ZS, dtype), _t(ZT, dtype), torch.tensor(YS), gamma=gamma, temperature=temperature)
    assert got.dtype == dtype and got.dim() == 0
    assert got.item() == pytest.approx(_ref_nkd(ZS, ZT, YS, gamma, temperature), rel=rel)


@pytest.mark.parametrize(("dtype", "rel"), PRECISIONS)
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_luminet_hand_value(temperature, dtype, rel):
    zs = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 0.5, 1.0]]
    zt = [[2.0, 1.0, -0.5], [0.5, 0.25, 2.5], [-1.0, 3.0, 0.0]]
    got = luminet(_t(zs, dtype), _t(zt, dtype), temperature=temperature)
    assert got.dtype == dtype and got.dim() == 0
    assert got.item() == pytest.approx(_ref_luminet(zs, zt, temperature), rel=rel)


# --------------------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------------------


def test_kd_matches_torch_kl_div():
    zs, zt, _ = _random_logits()
    for temperature in (1.0, 4.0):
        ref = (
            F.kl_div(
                F.log_softmax(zs / temperature, 1), F.softmax(zt / temperature, 1), reduction="batchmean"
            )
            * temperature**2
        )
        torch.testing.assert_close(kd(zs, zt, temperature), ref, rtol=1e-5, atol=1e-6)


def test_zero_when_student_equals_teacher():
    z, _, y = _random_logits()
    assert kd(z, z.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert dkd(z, z.clone(), y).item() == pytest.approx(0.0, abs=1e-6)
    assert dkd(z, z.clone(), y, alpha=3.0, beta=0.5, temperature=1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert luminet(z, z.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_nkd_at_student_equals_teacher():
    # NKD is a cross-entropy, not a KL: with equal logits it equals -p[y] log p[y] + gamma T^2 H(q),
    # and only its target term has a gradient (the non-target CE is minimal at q_s = q_t).
    z, _, y = _random_logits(batch=4, classes=6)
    gamma, temperature = 1.5, 2.0
    rows, labels = z.tolist(), y.tolist()
    expected = []
    for row, label in zip(rows, labels, strict=True):
        p = _softmax(row)
        q = _softmax([v for k, v in enumerate(row) if k != label], temperature)
        entropy = -sum(v * math.log(v) for v in q)
        expected.append(-p[label] * math.log(p[label]) + gamma * temperature**2 * entropy)
    student = z.clone().requires_grad_(True)
    loss = nkd(student, z, y, gamma=gamma, temperature=temperature)
    assert loss.item() == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    loss.backward()
    p = F.softmax(z, 1)
    onehot = F.one_hot(y, 6).float()
    p_target = p.gather(1, y[:, None])
    expected_grad = -p_target * (onehot - p) / z.shape[0]
    torch.testing.assert_close(student.grad, expected_grad, rtol=1e-4, atol=1e-6)


def test_nkd_non_target_part_really_excludes_target():
    # The gamma part must not depend on either side's target logit (the SDD repository's mask keeps it).
    zs, zt, y = _random_logits(batch=4, classes=5)

    def non_target_part(s, t):
        return nkd(s, t, y, gamma=1.0, temperature=2.0) - nkd(s, t, y, gamma=0.0, temperature=2.0)

    base = non_target_part(zs, zt)
    bump = F.one_hot(y, 5).float() * 7.0
    torch.testing.assert_close(non_target_part(zs + bump, zt), base, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(non_target_part(zs, zt - bump), base, rtol=1e-5, atol=1e-5)
    # ... while the target term does depend on the student's target logit.
    assert not torch.allclose(nkd(zs + bump, zt, y), nkd(zs, zt, y))


def test_nkd_teacher_target_probability_is_detached():
    zs, zt, y = _random_logits(batch=4, classes=5)
    teacher = zt.clone().requires_grad_(True)
    nkd(zs, teacher, y, gamma=0.0).backward()
    assert teacher.grad is None or torch.count_nonzero(teacher.grad) == 0


def test_dkd_decomposition_identity():
    # DKD paper: KD = TCKD + (1 - p_t[y]) * NCKD per sample (all at the same T, T^2 on both sides).
    zs, zt, y = _random_logits(batch=16, classes=10)
    for temperature in (1.0, 4.0):
        kd_per = _common.kd_per_sample(zs, zt, temperature)
        tckd, nckd = _common.tckd_nckd_per_sample(zs, zt, y, temperature)
        pt_target = F.softmax(zt / temperature, 1).gather(1, y[:, None]).squeeze(1)
        torch.testing.assert_close(kd_per, tckd + (1 - pt_target) * nckd, rtol=1e-4, atol=1e-5)
        # Hence dkd(alpha=1, beta=1) >= kd, since NCKD >= 0 and 1 - p_t[y] <= 1.
        assert dkd(zs, zt, y, alpha=1.0, beta=1.0, temperature=temperature) >= kd(zs, zt, temperature) - 1e-6
        # The public losses are the batch means of these per-sample values.
        torch.testing.assert_close(kd(zs, zt, temperature), kd_per.mean())
        torch.testing.assert_close(
            dkd(zs, zt, y, alpha=2.0, beta=3.0, temperature=temperature), (2 * tckd + 3 * nckd).mean()
        )


def test_luminet_invariant_to_per_class_affine_maps():
    zs, zt, _ = _random_logits(batch=16, classes=6)
    g = torch.Generator().manual_seed(1)
    scale = torch.rand(6, generator=g) * 2.5 + 0.5
    shift = torch.randn(6, generator=g) * 10
    base = luminet(zs, zt)
    torch.testing.assert_close(luminet(zs * scale + shift, zt), base, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(luminet(zs, zt * scale + shift), base, rtol=1e-4, atol=1e-4)
    z = zs.clone()
    assert luminet(z * scale + shift, z).item() == pytest.approx(0.0, abs=1e-4)


def test_luminet_has_no_temperature_squared_factor():
    zs = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 0.5, 1.0]]
    zt = [[2.0, 1.0, -0.5], [0.5, 0.25, 2.5], [-1.0, 3.0, 0.0]]
    # Direct KL of standardised logits at T = 8, without the 64x factor.
    expected = _ref_luminet(zs, zt, 8.0)
    assert luminet(_t(zs), _t(zt), temperature=8.0).item() == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------------------------------
# local_logits
# --------------------------------------------------------------------------------------------------


def _head(channels=6, classes=5, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(channels, classes, dtype=torch.float64)


def _authors_spp(fmap, scales):
    """The SDD authors' SPP (mdistiller/models/{cifar,imagenet}/utils.py, ``SPP.forward``) step by step:
    pool the map to 4x4, pool that 4x4 grid to 2x2 and to 1x1, and concatenate the grids M selects."""
    grid4 = F.adaptive_avg_pool2d(fmap, (4, 4))
    grids = {1: F.adaptive_avg_pool2d(grid4, (1, 1)), 2: F.adaptive_avg_pool2d(grid4, (2, 2)), 4: grid4}
    return torch.cat([grids[s].flatten(2) for s in scales], dim=2)


def _score(fc, pooled):
    """``fc`` applied to every cell of a pooled ``[B, C, N]`` stack: ``[B, K, N]``."""
    return fc(pooled.transpose(1, 2)).transpose(1, 2)


@pytest.mark.parametrize(
    ("pooling", "size"), [("direct", 8), ("direct", 7), ("direct", 2), ("pyramid", 8), ("pyramid", 2)]
)
def test_local_logits_region0_is_model_logits(pooling, size):
    # Pyramid pooling only where it equals direct pooling; on 7x7 maps its region 0 is not the global
    # average (test_local_logits_pyramid_on_7x7_map).
    fc = _head()
    fmap = torch.randn(3, 6, size, size, dtype=torch.float64)
    out = local_logits(fmap, fc, pooling=pooling)
    assert out.shape == (3, 5, 21)
    normal = fc(F.adaptive_avg_pool2d(fmap, 1).flatten(1))
    torch.testing.assert_close(out[:, :, 0], normal)
    torch.testing.assert_close(out[:, :, 0], fc(fmap.mean(dim=(2, 3))))


def test_local_logits_order_and_scales():
    fc = _head()
    fmap = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    out = local_logits(fmap, fc, scales=(1, 2))
    assert out.shape == (2, 5, 5)
    # Regions 1..4 are the 2x2 cells row-major: top-left, top-right, bottom-left, bottom-right.
    quadrants = [fmap[:, :, :4, :4], fmap[:, :, :4, 4:], fmap[:, :, 4:, :4], fmap[:, :, 4:, 4:]]
    for r, cell in enumerate(quadrants, start=1):
        torch.testing.assert_close(out[:, :, r], fc(cell.mean(dim=(2, 3))))
    # 4x4 cell (row 1, col 2) is region 1 + 4 + (1 * 4 + 2) with the default scales.
    full = local_logits(fmap, fc)
    torch.testing.assert_close(full[:, :, 5 + 6], fc(fmap[:, :, 2:4, 4:6].mean(dim=(2, 3))))
    # Scales are taken in the order given.
    rev = local_logits(fmap, fc, scales=(2, 1))
    torch.testing.assert_close(rev[:, :, 4], out[:, :, 0])
    torch.testing.assert_close(rev[:, :, :4], out[:, :, 1:])
    assert local_logits(fmap, fc, scales=[1]).shape == (2, 5, 1)


@pytest.mark.parametrize("shape", [(8, 8), (4, 4), (2, 2), (1, 1), (12, 4), (8, 2), (1, 4)])
@pytest.mark.parametrize("scales", [(1, 2, 4), (1, 2)])
def test_local_logits_poolings_agree_when_sides_are_1_2_or_multiples_of_4(shape, scales):
    fc = _head(channels=6, classes=5)
    fmap = torch.randn(2, 6, *shape, dtype=torch.float64)
    pyramid = local_logits(fmap, fc, scales, pooling="pyramid")
    torch.testing.assert_close(pyramid, _score(fc, _authors_spp(fmap, scales)))
    torch.testing.assert_close(local_logits(fmap, fc, scales, pooling="direct"), pyramid)


@pytest.mark.parametrize("size", [8, 7])
def test_local_logits_direct_equals_pooled_logit_map(size):
    # Pooling commutes with a linear classifier: pool the per-location logit map instead.
    fc = _head(channels=6, classes=5)
    fmap = torch.randn(2, 6, size, size, dtype=torch.float64)
    logit_map = torch.einsum("bchw,kc->bkhw", fmap, fc.weight) + fc.bias[None, :, None, None]
    pooled_map = torch.cat([F.adaptive_avg_pool2d(logit_map, s).flatten(2) for s in (1, 2, 4)], dim=2)
    torch.testing.assert_close(local_logits(fmap, fc, pooling="direct"), pooled_map)


@pytest.mark.parametrize("scales", [(1, 2, 4), (1, 2)])
def test_local_logits_pyramid_on_7x7_map(scales):
    # ImageNet ResNets' 7x7 maps: the default is the authors' SPP, also for M = {1, 2} (their ImageNet
    # ResNets and MobileNet use SPP(M=[1, 2]), which still pools to 4x4 first); direct pooling differs.
    fc = _head(channels=6, classes=5)
    fmap = torch.randn(3, 6, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    default = local_logits(fmap, fc, scales)
    torch.testing.assert_close(default, _score(fc, _authors_spp(fmap, scales)))
    direct = local_logits(fmap, fc, scales, pooling="direct")
    assert (default - direct)[:, :, :5].abs().amax() > 1e-2
    # Not "pool to the largest scale first": with M = {1, 2} that would start from a 2x2 grid.
    grid2 = F.adaptive_avg_pool2d(fmap, 2)
    from_2x2 = torch.cat([F.adaptive_avg_pool2d(grid2, 1).flatten(2), grid2.flatten(2)], dim=2)
    assert (default[:, :, :5] - _score(fc, from_2x2)).abs().amax() > 1e-2
    # By hand: 7 -> 4 adaptive windows are rows [0, 2), [1, 4), [3, 6), [5, 7), so region 0 weighs the
    # rows (and columns) 3, 5, 2, 4, 2, 5, 3 / 24 instead of 1 / 7 each.
    w = torch.tensor([3.0, 5.0, 2.0, 4.0, 2.0, 5.0, 3.0], dtype=torch.float64) / 24
    weighted_mean = torch.einsum("bchw,h,w->bc", fmap, w, w)
    torch.testing.assert_close(default[:, :, 0], fc(weighted_mean))
    torch.testing.assert_close(direct[:, :, 0], fc(fmap.mean(dim=(2, 3))))


def test_local_logits_pyramid_on_maps_smaller_than_4x4():
    # A 3x3 map is pooled up to 4x4 with overlapping windows, so the poolings differ; a 2x2 map is
    # repeated to 4x4 and averaged back, so they agree (MobileNetV2's 2x2 maps at 32x32 input).
    fc = _head(channels=6, classes=5)
    fmap3 = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    pyramid3 = local_logits(fmap3, fc)
    torch.testing.assert_close(pyramid3, _score(fc, _authors_spp(fmap3, (1, 2, 4))))
    assert (pyramid3 - local_logits(fmap3, fc, pooling="direct")).abs().amax() > 1e-2
    fmap2 = torch.randn(2, 6, 2, 2, dtype=torch.float64)
    cells = fmap2.flatten(2)  # the four locations, row-major
    torch.testing.assert_close(local_logits(fmap2, fc, (1, 2))[:, :, 1:], _score(fc, cells))


def test_local_logits_accepts_any_callable_head():
    fc = _head()
    norm = nn.LayerNorm(6, dtype=torch.float64)

    def head(v):
        return fc(norm(v))

    fmap = torch.randn(2, 6, 7, 7, dtype=torch.float64)
    out = local_logits(fmap, head, scales=(1, 2), pooling="direct")
    assert out.shape == (2, 5, 5)
    torch.testing.assert_close(out[:, :, 0], head(fmap.mean(dim=(2, 3))))


def test_local_logits_gradients_reach_map_and_head():
    fc = nn.Linear(4, 3)
    fmap = torch.randn(2, 4, 8, 8, requires_grad=True)
    local_logits(fmap, fc).sum().backward()
    assert fmap.grad is not None and torch.isfinite(fmap.grad).all()
    assert fc.weight.grad is not None


@pytest.mark.parametrize(
    ("fmap", "scales"),
    [
        (torch.randn(2, 6, 8), (1, 2)),
        (torch.randn(2, 6), (1,)),
        (torch.randn(2, 6, 4, 4), (1, 0)),
        (torch.randn(2, 6, 4, 4), (1, -2)),
        (torch.randn(2, 6, 4, 4), ()),
        (torch.randn(2, 6, 4, 4), 2),
        (torch.randn(2, 6, 4, 4), (1, 1.5)),
    ],
)
def test_local_logits_validates_inputs(fmap, scales):
    with pytest.raises(ValueError, match="local_logits"):
        local_logits(fmap, nn.Linear(6, 3), scales=scales)


def test_local_logits_pooling_choices():
    fmap, fc = torch.randn(2, 6, 9, 9), nn.Linear(6, 3)
    with pytest.raises(ValueError, match="pyramid, direct"):
        local_logits(fmap, fc, pooling="max")
    # Pyramid grids come from the 4x4 grid, so only divisors of 4; direct pooling takes any scale.
    for scales in [(1, 3), (1, 2, 8)]:
        with pytest.raises(ValueError, match="must divide 4.*pooling 'direct'"):
            local_logits(fmap, fc, scales)
        assert local_logits(fmap, fc, scales, pooling="direct").shape[2] == sum(s * s for s in scales)


# --------------------------------------------------------------------------------------------------
# sdd
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["code", "paper"])
def test_sdd_single_region_equals_base(rule):
    zs, zt, y = _random_logits(batch=6, classes=7)
    s_local, t_local = zs[:, :, None], zt[:, :, None]
    torch.testing.assert_close(
        sdd(s_local, t_local, y, base="kd", temperature=3.0, rule=rule), kd(zs, zt, 3.0)
    )
    torch.testing.assert_close(
        sdd(s_local, t_local, y, base="dkd", alpha=0.5, beta=6.0, temperature=2.0, rule=rule),
        dkd(zs, zt, y, alpha=0.5, beta=6.0, temperature=2.0),
    )
    torch.testing.assert_close(
        sdd(s_local, t_local, y, base="nkd", gamma=1.2, temperature=1.5, rule=rule),
        nkd(zs, zt, y, gamma=1.2, temperature=1.5),
    )


def _sdd_case():
    # B = 2, K = 3, N = 3 regions (region 0 = global). Teacher local logits [B, K, N] by column:
    # sample 0 (label 0): global -> 0 (right), region 1 -> 1 (wrong), region 2 -> 0 (right)
    # sample 1 (label 2): global -> 0 (wrong), region 1 -> 1 (wrong), region 2 -> 2 (right)
    teacher_by_region = [
        [[3.0, 0.0, 1.0], [0.5, 2.5, 0.0], [2.0, 1.0, 0.5]],
        [[2.0, 1.0, 1.5], [0.0, 2.0, 1.0], [0.5, 0.0, 3.0]],
    ]
    # The student's own predictions follow a different pattern (all regions -> class 2 or 1);
    # they must not influence the weights.
    student_by_region = [
        [[0.0, 0.5, 2.0], [1.0, 2.0, 0.0], [0.0, 0.0, 1.0]],
        [[1.0, 0.0, 2.0], [0.5, 0.5, 1.5], [0.0, 3.0, 1.0]],
    ]
    teacher = torch.tensor(teacher_by_region).transpose(1, 2)  # [B, K, N]
    student = torch.tensor(student_by_region).transpose(1, 2)
    target = torch.tensor([0, 2])
    # Hand-derived weights [b][r]:
    # code: correctness differs from global -> s0: r1 yes, r2 no; s1: r1 no (both wrong), r2 yes.
    # paper: predicted class differs from global -> s0: r1 yes, r2 no; s1: r1 yes, r2 yes.
    code_w = [[1.0, 2.0, 1.0], [1.0, 1.0, 2.0]]
    paper_w = [[1.0, 2.0, 1.0], [1.0, 2.0, 2.0]]
    return student, teacher, target, code_w, paper_w


@pytest.mark.parametrize(("dtype", "rel"), PRECISIONS)
@pytest.mark.parametrize("base", ["kd", "dkd", "nkd"])
@pytest.mark.parametrize("rule", ["code", "paper"])
def test_sdd_weighted_mean_by_hand(base, rule, dtype, rel):
    student, teacher, target, code_w, paper_w = _sdd_case()
    student, teacher = student.to(dtype), teacher.to(dtype)
    weights = code_w if rule == "code" else paper_w
    temperature = 2.0
    total = 0.0
    for b in range(2):
        for r in range(3):
            s_row = [student[b, :, r].tolist()]
            t_row = [teacher[b, :, r].tolist()]
            y_row = [int(target[b])]
            if base == "kd":
                d = _ref_kd(s_row, t_row, temperature)
            elif base == "dkd":
                d = _ref_dkd(s_row, t_row, y_row, 1.0, 8.0, temperature)
            else:
                d = _ref_nkd(s_row, t_row, y_row, 1.5, temperature)
            total += weights[b][r] * d
    expected = total / (3 * 2)
    got = sdd(student, teacher, target, base=base, temperature=temperature, rule=rule)
    assert got.dtype == dtype and got.dim() == 0
    assert got.item() == pytest.approx(expected, rel=rel)


def test_sdd_complementary_weight_and_rules_differ():
    student, teacher, target, _, _ = _sdd_case()
    plain = sdd(student, teacher, target, complementary_weight=1.0)
    # With weight 1 everything is a plain mean of per-region KD.
    per = [
        _ref_kd([student[b, :, r].tolist()], [teacher[b, :, r].tolist()], 4.0)
        for b in range(2)
        for r in range(3)
    ]
    assert plain.item() == pytest.approx(sum(per) / 6, rel=1e-5)
    assert sdd(student, teacher, target, rule="code") != sdd(student, teacher, target, rule="paper")
    # Region 0 is never up-weighted: with only the global region any weight gives the base loss.
    torch.testing.assert_close(
        sdd(student[:, :, :1], teacher[:, :, :1], target, complementary_weight=5.0),
        kd(student[:, :, 0], teacher[:, :, 0]),
    )


def test_sdd_rejects_unknown_choices():
    student, teacher, target, _, _ = _sdd_case()
    with pytest.raises(ValueError, match="kd, dkd, nkd"):
        sdd(student, teacher, target, base="fitnet")
    with pytest.raises(ValueError, match="code, paper"):
        sdd(student, teacher, target, rule="both")
    with pytest.raises(ValueError, match="sdd"):
        sdd(student[:, :, 0], teacher[:, :, 0], target)
    with pytest.raises(ValueError, match="sdd"):
        sdd(student, teacher[:, :, :2], target)


def test_shape_and_target_validation():
    zs, zt, y = _random_logits(batch=4, classes=5)
    with pytest.raises(ValueError, match="kd"):
        kd(zs, zt[:, :4])
    with pytest.raises(ValueError, match="dkd"):
        dkd(zs, zt, y[:3])
    with pytest.raises(TypeError, match="nkd"):
        nkd(zs, zt, y.float())
    with pytest.raises(ValueError, match="luminet"):
        luminet(zs[0], zt[0])


# --------------------------------------------------------------------------------------------------
# numerics and dtypes
# --------------------------------------------------------------------------------------------------


def _all_losses(zs, zt, y, temperature):
    b, k = zs.shape
    # Three "regions" built from the logits so sdd sees extreme values too.
    s_local = torch.stack([zs, zs.flip(0), -zs], dim=2)
    t_local = torch.stack([zt, -zt, zt.flip(1)], dim=2)
    return {
        "kd": kd(zs, zt, temperature),
        "dkd": dkd(zs, zt, y, temperature=temperature),
        "nkd": nkd(zs, zt, y, temperature=temperature),
        "luminet": luminet(zs, zt, temperature),
        "sdd_kd": sdd(s_local, t_local, y, base="kd", temperature=temperature),
        "sdd_dkd": sdd(s_local, t_local, y, base="dkd", temperature=temperature),
        "sdd_nkd": sdd(s_local, t_local, y, base="nkd", temperature=temperature, rule="paper"),
    }


@pytest.mark.parametrize("magnitude", [50.0, 100.0])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_gradients_finite_for_extreme_logits(magnitude, temperature):
    g = torch.Generator().manual_seed(3)
    sign_s = torch.randint(0, 2, (6, 10), generator=g).float() * 2 - 1
    sign_t = torch.randint(0, 2, (6, 10), generator=g).float() * 2 - 1
    y = torch.randint(0, 10, (6,), generator=g)
    # Make the hard cases explicit: teacher sure of the label, student sure it is not, and the reverse.
    sign_t[0], sign_s[0] = -1.0, -1.0
    sign_t[0, y[0]], sign_s[0, y[0]] = 1.0, -1.0
    sign_s[1] = 1.0
    sign_s[1, y[1]], sign_t[1, y[1]] = -1.0, -1.0
    for name in _all_losses(sign_s, sign_t, y, temperature):
        zs = (sign_s * magnitude).requires_grad_(True)
        zt = (sign_t * magnitude).requires_grad_(True)
        loss = _all_losses(zs, zt, y, temperature)[name]
        assert torch.isfinite(loss), name
        loss.backward()
        assert torch.isfinite(zs.grad).all(), name
        assert torch.isfinite(zt.grad).all(), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    zs, zt, y = _random_logits(batch=6, classes=8)
    zs_d = zs.to(dtype).requires_grad_(True)
    zt_d = zt.to(dtype)
    got = _all_losses(zs_d, zt_d, y, 4.0)
    ref = _all_losses(zs_d.detach().float(), zt_d.float(), y, 4.0)
    for name, value in got.items():
        assert value.dtype == torch.float32 and value.dim() == 0, name
        torch.testing.assert_close(value, ref[name], rtol=1e-5, atol=1e-6)
    sum(got.values()).backward()
    assert zs_d.grad.dtype == dtype and torch.isfinite(zs_d.grad.float()).all()
    # Mixed inputs (an autocast student against a float32 teacher) are float32 too.
    mixed = _all_losses(zs_d.detach(), zt, y, 4.0)
    assert all(value.dtype == torch.float32 for value in mixed.values())


def test_float64_inputs_are_computed_in_float64():
    zs, zt, y = _random_logits(batch=6, classes=8)
    zs64 = zs.double().requires_grad_(True)
    got = _all_losses(zs64, zt.double(), y, 4.0)
    ref = _all_losses(zs, zt, y, 4.0)
    for name, value in got.items():
        assert value.dtype == torch.float64 and value.dim() == 0, name
        torch.testing.assert_close(value.float(), ref[name], rtol=1e-5, atol=1e-6)
    sum(got.values()).backward()
    assert zs64.grad.dtype == torch.float64
    # float64 wins over a narrower partner as well.
    assert kd(zs64.detach(), zt.half()).dtype == torch.float64


def _gradcheck_inputs(seed=5, batch=3, classes=4):
    g = torch.Generator().manual_seed(seed)
    zs = (torch.randn(batch, classes, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    zt = (torch.randn(batch, classes, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    y = torch.randint(0, classes, (batch,), generator=g)
    return zs, zt, y


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_logit_losses_pass_gradcheck(temperature):
    zs, zt, y = _gradcheck_inputs()
    assert torch.autograd.gradcheck(lambda s, t: kd(s, t, temperature), (zs, zt))
    assert torch.autograd.gradcheck(
        lambda s, t: dkd(s, t, y, alpha=0.5, beta=2.0, temperature=temperature), (zs, zt)
    )
    assert torch.autograd.gradcheck(lambda s, t: luminet(s, t, temperature), (zs, zt))
    # NKD detaches the teacher's p_t[y], so only its gradient with respect to the student is exact.
    teacher = zt.detach()
    assert torch.autograd.gradcheck(lambda s: nkd(s, teacher, y, temperature=temperature), (zs,))


@pytest.mark.parametrize("pooling", ["pyramid", "direct"])
@pytest.mark.parametrize("base", ["kd", "dkd", "nkd"])
def test_sdd_with_local_logits_passes_gradcheck(base, pooling):
    # Through the whole SDD path: student map and student head weights -> local logits -> sdd. A 7x7 map
    # makes the two poolings differ; the teacher map gets a gradient too, except for NKD (detached p_t[y]).
    g = torch.Generator().manual_seed(6)
    channels, classes = 3, 4
    fmap_s = torch.randn(2, channels, 7, 7, generator=g, dtype=torch.float64).requires_grad_(True)
    fmap_t = torch.randn(2, channels, 7, 7, generator=g, dtype=torch.float64).requires_grad_(base != "nkd")
    weight = torch.randn(classes, channels, generator=g, dtype=torch.float64).requires_grad_(True)
    bias = torch.randn(classes, generator=g, dtype=torch.float64).requires_grad_(True)
    teacher_fc = _head(channels, classes, seed=7)
    y = torch.tensor([1, 3])

    def loss(s_map, w, b, t_map):
        local_s = local_logits(s_map, lambda v: F.linear(v, w, b), pooling=pooling)
        local_t = local_logits(t_map, teacher_fc, pooling=pooling)
        return sdd(local_s, local_t, y, base=base, temperature=2.0)

    inputs = (fmap_s, weight, bias, fmap_t)
    assert loss(*inputs).dtype == torch.float64
    # fast_mode compares analytical and numerical directional derivatives along random directions, which
    # catches the same errors at a fraction of the cost of the full ~800-column numerical Jacobian.
    assert torch.autograd.gradcheck(loss, inputs, fast_mode=True)


def test_local_logits_under_bf16_autocast():
    fc = nn.Linear(6, 5)
    fmap = torch.randn(2, 6, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = local_logits(fmap, fc)
    assert out.shape == (2, 5, 21)
    target = torch.tensor([1, 3])
    loss = sdd(out, out.detach() + 0.1, target, base="dkd")
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_int32_labels_accepted():
    zs, zt, y = _random_logits(batch=4, classes=5)
    y32 = y.to(torch.int32)
    torch.testing.assert_close(dkd(zs, zt, y32), dkd(zs, zt, y))
    torch.testing.assert_close(nkd(zs, zt, y32), nkd(zs, zt, y))
    local_s, local_t = torch.stack([zs, zs], 2), torch.stack([zt, -zt], 2)
    torch.testing.assert_close(sdd(local_s, local_t, y32, base="dkd"), sdd(local_s, local_t, y, base="dkd"))
