"""kdcompress.quality against hand arithmetic and a literal reference of the docs/feature-kd.md steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdcompress.probe.quality import balanced_indices, knowledge_quality, select_layers

EPS = 1e-12


def reference_quality(
    features: np.ndarray, labels: np.ndarray, n_train: int | None = None
) -> dict[str, float]:
    """The 9 steps of docs/feature-kd.md, written as literally as possible: explicit loops, explicit SVD."""
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    labels = np.asarray(labels)
    n, d = x.shape
    n_train = n if n_train is None else n_train
    classes = sorted(set(labels.tolist()))

    # 1.
    d_eff = min(n, d)
    # 2. absolute cosine similarity of unit-norm rows (a zero row keeps norm eps).
    u = np.array([row / max(np.linalg.norm(row), EPS) for row in x])
    g = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            g[i, j] = abs(np.dot(u[i], u[j]))
    # 3.
    avg_intra, min_intra = [], []
    for c in classes:
        block = g[np.ix_(labels == c, labels == c)]
        avg_intra.append(block.mean())
        min_intra.append(block.min())
    inter = []
    for c in classes:
        for c2 in classes:
            if c != c2:
                inter.append(g[np.ix_(labels == c, labels == c2)].mean())
    avg_inter = np.mean(inter)
    # 4.
    separation = np.mean(avg_intra) - avg_inter
    # 5.
    width = max(int((labels == c).sum()) for c in classes)
    spectra, eds = [], []
    for c in classes:
        rows = x[labels == c]
        centred = rows - rows.mean(axis=0)
        sv2 = np.linalg.svd(centred, compute_uv=False) ** 2
        sv2 = sv2 / sv2.sum() if sv2.sum() > 1e-20 else np.zeros_like(sv2)
        spectrum = np.concatenate([sv2, np.zeros(width - len(sv2))])
        spectra.append(spectrum)
        cumulative = 0.0
        ed = 0
        for k in range(width):
            cumulative += spectrum[k]
            if cumulative >= 0.95:
                ed = k + 1
                break
        eds.append(ed)
    # 6.
    length = min(sum(eds), width)
    entropies = []
    for spectrum in spectra:
        head = spectrum[:length]
        h = 0.0
        if head.sum() > 0:
            for value in head / head.sum():
                if value > 1e-15:
                    h -= value * math.log(value)
        entropies.append(h)
    # 7.
    information = (1.0 - np.mean(min_intra)) * np.mean(entropies) / math.log(5)
    # 8.
    min_dists, mean_norms = [], []
    for c in classes:
        best = math.inf
        for i in np.flatnonzero(labels == c):
            for j in np.flatnonzero(labels != c):
                best = min(best, np.linalg.norm(x[i] - x[j]))
        min_dists.append(best)
        mean_norms.append(np.mean([np.linalg.norm(row) for row in x[labels == c]]))
    efficiency = (n_train / math.pi) ** (1.0 / d_eff) * 2.0 * np.mean(min_dists) / np.mean(mean_norms)
    # 9.
    quality = separation + math.sqrt(information * efficiency)
    return {
        "separation": separation,
        "information": information,
        "efficiency": efficiency,
        "quality": quality,
    }


def assert_close(got: dict[str, float], want: dict[str, float], tol: float = 1e-6) -> None:
    for key in ("separation", "information", "efficiency", "quality"):
        assert isinstance(got[key], float), key
        assert got[key] == pytest.approx(want[key], rel=tol, abs=tol), key


# --- hand-checked case ----------------------------------------------------------------------------------

HAND_X = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 2.0], [1.0, -1.0]])
HAND_Y = np.array([0, 0, 0, 1, 1, 1])


def test_hand_checked_case():
    # Step 2. Class 0 rows a1=(1,0), a2=(-1,0), a3=(0,1): |cos| a1a2 = 1, a1a3 = a2a3 = 0.
    # Class 1 rows b1=(1,1), b2=(2,2), b3=(1,-1): |cos| b1b2 = 1, b1b3 = b2b3 = 0.
    # Every class-0 row against every class-1 row has |cos| = 1/sqrt(2).
    # Step 3: each intra block is [[1,1,0],[1,1,0],[0,0,1]] -> mean 5/9, min 0; AvgInter = 1/sqrt(2).
    separation = 5 / 9 - 1 / math.sqrt(2)
    # Step 5. Class 0 centred (mean (0,1/3)): scatter diag(2, 2/3) -> eigenvalues 2, 2/3 of total 8/3
    # -> spectrum (3/4, 1/4), cumulative 0.75, 1.0 -> ED 2.
    # Class 1 centred (mean (4/3,2/3)): scatter [[2/3,4/3],[4/3,14/3]], trace 16/3, det 4/3
    # -> normalised eigenvalues 1/2 +- sqrt(13)/8 = 0.9507, 0.0493 -> ED 1 (0.9507 >= 0.95).
    # Step 6: W = 3, L = min(2 + 1, 3) = 3, spectra padded with a zero; the zero contributes 0 ln 0 = 0.
    q = 0.5 + math.sqrt(13) / 8
    h0 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    h1 = -(q * math.log(q) + (1 - q) * math.log(1 - q))
    # Step 7: MinIntra = 0 for both classes.
    information = (1 - 0) * (h0 + h1) / 2 / math.log(5)
    # Step 8: nearest pairs a1-b1, a1-b3, a3-b1 at distance 1 -> MinInterDist = 1 for both classes.
    # Norms: class 0 all 1; class 1 sqrt2, 2sqrt2, sqrt2 -> mean 4sqrt2/3. D_eff = min(6, 2) = 2, n_train = 6.
    efficiency = (6 / math.pi) ** (1 / 2) * 2 * 1 / ((1 + 4 * math.sqrt(2) / 3) / 2)
    quality = separation + math.sqrt(information * efficiency)
    want = {
        "separation": separation,
        "information": information,
        "efficiency": efficiency,
        "quality": quality,
    }

    assert_close(knowledge_quality(torch.tensor(HAND_X), torch.tensor(HAND_Y)), want, 1e-9)
    assert_close(reference_quality(HAND_X, HAND_Y), want, 1e-9)


def test_hand_case_n_train_only_changes_efficiency():
    base = knowledge_quality(HAND_X, HAND_Y)
    bigger = knowledge_quality(HAND_X, HAND_Y, n_train=50_000)
    assert bigger["separation"] == base["separation"]
    assert bigger["information"] == base["information"]
    assert bigger["efficiency"] == pytest.approx(base["efficiency"] * math.sqrt(50_000 / 6), rel=1e-12)


# --- against the literal reference -----------------------------------------------------------------------


def make_data(sizes: list[int], dim: int, seed: int, spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for c, size in enumerate(sizes):
        centre = rng.normal(size=dim) * 2.0
        rows.append(centre + spread * rng.normal(size=(size, dim)) * rng.uniform(0.2, 2.0, size=dim))
        labels += [c] * size
    return np.concatenate(rows), np.array(labels)


@pytest.mark.parametrize(
    ("sizes", "dim", "seed"),
    [
        ([5, 9, 14], 4, 0),  # D < n, unequal classes, L capped by W
        ([6, 6, 6, 6], 40, 1),  # D > n
        ([3, 12], 7, 2),  # D < n, very unequal
        ([8, 5, 7], 20, 3),  # D == n
        ([4, 4, 4, 4, 4, 4], 3, 4),  # narrow layer: sum of EDs > D
    ],
)
def test_matches_reference(sizes, dim, seed):
    x, y = make_data(sizes, dim, seed)
    assert_close(
        knowledge_quality(torch.from_numpy(x), torch.from_numpy(y), n_train=1000),
        reference_quality(x, y, 1000),
    )


def test_matches_reference_relu_features_with_zero_row_and_map_shape():
    x, y = make_data([7, 9, 6], 24, 5)
    x = np.maximum(x - 1.0, 0.0)
    x[3] = 0.0  # an all-zero feature vector
    got = knowledge_quality(torch.from_numpy(x).float().reshape(-1, 6, 2, 2), torch.from_numpy(y))
    assert all(math.isfinite(v) for v in got.values())
    assert_close(got, reference_quality(x.astype(np.float32), y), 1e-5)


def test_accepts_numpy_and_arbitrary_label_values():
    x, y = make_data([6, 8], 5, 6)
    remapped = np.where(y == 0, 7, -3)
    assert_close(
        knowledge_quality(x, remapped), knowledge_quality(torch.from_numpy(x), torch.from_numpy(y)), 1e-12
    )


def test_chunked_gram_matches_direct_product(monkeypatch):
    import kdcompress.probe.quality as quality

    monkeypatch.setattr(quality, "_CHUNK_BYTES", 8 * 600 * 3)  # 3 columns per chunk for 600 rows
    x = torch.randn(600, 10, dtype=torch.float32)
    assert torch.allclose(quality._gram(x), x.double() @ x.double().T, rtol=1e-12, atol=1e-12)


# --- properties by construction -------------------------------------------------------------------------


def test_separated_classes_have_higher_separation_than_mixed():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 10)
    directions = np.eye(12)[[0, 4, 8]] * 5.0
    separated = directions[y] + 0.3 * rng.normal(size=(30, 12))
    mixed = separated[rng.permutation(30)]
    assert knowledge_quality(separated, y)["separation"] > knowledge_quality(mixed, y)["separation"] + 0.3


def test_richer_class_spread_has_more_information():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 12)
    centres = rng.normal(size=(3, 16)) * 3.0
    rich = centres[y] + rng.normal(size=(36, 16))
    axes = rng.normal(size=(3, 16))
    collapsed = centres[y] + rng.normal(size=(36, 1)) * axes[y] + 1e-3 * rng.normal(size=(36, 16))
    assert knowledge_quality(rich, y)["information"] > 2 * knowledge_quality(collapsed, y)["information"]


def test_efficiency_grows_with_inter_class_distance_and_ignores_global_scale():
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1], 10)
    noise = 0.1 * rng.normal(size=(20, 6))
    base = np.ones(6)
    offset = np.eye(6)[0]
    values = [
        knowledge_quality(base + gap * offset * y[:, None] + noise, y)["efficiency"] for gap in (1, 2, 4)
    ]
    assert values[0] < values[1] < values[2]
    x = base + noise
    assert knowledge_quality(3.5 * x, y)["efficiency"] == pytest.approx(knowledge_quality(x, y)["efficiency"])


def test_separation_invariant_to_positive_per_sample_scaling():
    x, y = make_data([6, 7, 5], 10, 7)
    scale = np.random.default_rng(3).uniform(0.1, 10.0, size=(len(x), 1))
    assert knowledge_quality(x * scale, y)["separation"] == pytest.approx(
        knowledge_quality(x, y)["separation"], abs=1e-12
    )


def test_layer_narrower_than_sum_of_class_eds_keeps_information():
    # 3 classes with full 2-D spread: each ED = 2, sum 6 > D = 2, W = 10, L = 6 -> p has zeros.
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1, 2], 10)
    angles = np.array([0.3, 2.4, 4.5])[y]
    x = 2.0 * np.stack([np.cos(angles), np.sin(angles)], 1) + rng.normal(size=(30, 2)) * [1.0, 0.8]
    for c in range(3):
        sv2 = np.linalg.svd(x[y == c] - x[y == c].mean(0), compute_uv=False) ** 2
        assert sv2[0] / sv2.sum() < 0.95  # ED_c = 2, so L = 6 while only 2 of the 6 entries are non-zero
    got = knowledge_quality(x, y)
    assert got["information"] > 0.1
    assert_close(got, reference_quality(x, y))


def test_degenerate_inputs_stay_finite():
    # A one-sample class (no variance) and identical rows: ED 0 and entropy 0 for them, no NaN.
    x = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0.0, 1.0, 5.0]])
    got = knowledge_quality(x, [0, 0, 0, 1])
    assert all(math.isfinite(v) for v in got.values())
    assert got["information"] == 0.0
    assert knowledge_quality(np.zeros((4, 3)), [0, 0, 1, 1])["efficiency"] == 0.0


@pytest.mark.parametrize(
    ("features", "labels", "n_train", "message"),
    [
        (np.ones((4, 3)), [0, 0, 0, 0], None, "at least 2 classes"),
        (np.ones((4, 3)), [0, 1, 0], None, "4 samples but labels have 3"),
        (np.ones((4, 3)), [0.0, 1.0, 0.0, 1.0], None, "integer"),
        (np.ones((4, 3)), [0, 1, 0, 1], 0, "n_train"),
    ],
)
def test_knowledge_quality_errors(features, labels, n_train, message):
    with pytest.raises(ValueError, match=message):
        knowledge_quality(features, labels, n_train)


# --- select_layers ---------------------------------------------------------------------------------------


def test_select_layers_returns_top_k_in_depth_order():
    scores = {"stem": 0.1, "block1": 0.9, "block2": 0.3, "block3": 1.2, "block4": 0.8, "flatten": 0.2}
    assert select_layers(scores, 3) == ["block1", "block3", "block4"]
    assert select_layers(scores, 1) == ["block3"]
    assert select_layers(scores, 6) == list(scores)


def test_select_layers_breaks_ties_by_depth():
    scores = {"a": 0.5, "b": 0.7, "c": 0.5, "d": 0.5}
    assert select_layers(scores, 2) == ["a", "b"]
    assert select_layers(scores, 3) == ["a", "b", "c"]


@pytest.mark.parametrize("k", [0, -1, 4])
def test_select_layers_rejects_bad_k(k):
    with pytest.raises(ValueError, match="cannot select"):
        select_layers({"a": 1.0, "b": 2.0, "c": 3.0}, k)


def test_select_layers_rejects_nan():
    with pytest.raises(ValueError, match="NaN for layer"):
        select_layers({"a": 1.0, "b": float("nan")}, 1)


# --- balanced_indices ------------------------------------------------------------------------------------


def test_balanced_indices_equal_counts_sorted_and_deterministic():
    labels = torch.arange(100) % 4
    picked = balanced_indices(labels, 40, seed=3)
    assert picked.dtype == torch.long
    assert torch.equal(picked, picked.sort().values)
    assert torch.bincount(labels[picked]).tolist() == [10, 10, 10, 10]
    assert torch.equal(picked, balanced_indices(labels, 40, seed=3))
    assert not torch.equal(picked, balanced_indices(labels, 40, seed=4))
    assert len(set(picked.tolist())) == 40


def test_balanced_indices_small_class_gives_all_and_others_fill_up():
    labels = np.array([0] * 3 + [1] * 50 + [2] * 50)
    picked = balanced_indices(labels, 31, seed=0)
    counts = np.bincount(labels[picked.numpy()])
    assert counts.tolist() == [3, 14, 14]


def test_balanced_indices_remainder_and_oversized_request():
    labels = torch.arange(30) % 3
    counts = torch.bincount(labels[balanced_indices(labels, 11, seed=1)]).tolist()
    assert sum(counts) == 11 and max(counts) - min(counts) == 1
    assert torch.equal(balanced_indices(labels, 1000, seed=0), torch.arange(30))


def test_balanced_indices_rejects_non_positive_count():
    with pytest.raises(ValueError, match="positive"):
        balanced_indices([0, 1, 0, 1], 0, seed=0)
