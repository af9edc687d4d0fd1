"""Evaluation maths (FID, KID, precision/recall, conditional accuracy) and the in-domain classifier."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from components.config import ClassifierConfig
from components.data.spec import DataSpec
from components.metrics.conditional import classifier_accuracy, conditional_accuracy
from components.metrics.features import apply_batched
from components.metrics.fid import (
    feature_stats,
    fid_numpy,
    fid_spread,
    fid_torchmetrics,
    frechet_distance,
    kid,
)
from components.metrics.precision_recall import knn_radii, precision_recall
from components.models.base import state_checksum, to_uint8
from components.models.classifier import Classifier, ClassifierNet, FeatureExtractor

D = 16  # feature dimension used by the maths tests


def gaussian(n: int, seed: int, shift: float = 0.0, scale: float = 1.0, d: int = D) -> np.ndarray:
    """``(n, d)`` samples of a fixed anisotropic Gaussian, optionally shifted/scaled."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(123).normal(size=(d, d)) / np.sqrt(d)  # same covariance for every seed
    return rng.normal(size=(n, d)) @ mixing * scale + shift


# ---------------------------------------------------------------------------- Fréchet distance
def test_frechet_golden_diagonal() -> None:
    # diagonal covariances: ||mu1-mu2||^2 + sum(s1 + s2 - 2 sqrt(s1 s2)), computed by hand
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = (1 + 0 + 4) + (1 + 4 - 4) + (4 + 1 - 4) + (9 + 1 - 6)  # = 5 + 1 + 1 + 4
    assert expected == 11
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(11.0, abs=1e-9)


def test_frechet_golden_full_covariance_commuting() -> None:
    # sigma2 = 4 sigma1 -> sqrt(sigma1 sigma2) = 2 sigma1 -> trace term = tr(s1) + 4 tr(s1) - 4 tr(s1) = tr(s1)
    a = np.array([[2.0, 0.5], [0.5, 1.0]])
    assert frechet_distance(np.zeros(2), a, np.ones(2), 4 * a) == pytest.approx(2.0 + np.trace(a), abs=1e-9)


def test_frechet_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_fid_of_a_set_with_itself_is_zero() -> None:
    x = gaussian(500, 0)
    assert abs(fid_numpy(x, x)) < 1e-6
    assert abs(fid_torchmetrics(x, x)) < 1e-4


def test_fid_same_distribution_small_shifted_or_noise_large() -> None:
    a, b = gaussian(2000, 1), gaussian(2000, 2)  # disjoint samples of one Gaussian
    same = fid_numpy(a, b)
    shifted = fid_numpy(a, gaussian(2000, 3, shift=1.0))  # ||shift||^2 = D
    noise = fid_numpy(a, np.random.default_rng(4).uniform(-3, 3, size=(2000, D)))
    assert 0 <= same < 0.3
    assert shifted == pytest.approx(D, rel=0.1)
    assert noise > 10
    assert fid_numpy(a, gaussian(2000, 5, scale=2.0)) > 3  # covariance change alone is seen too


def test_fid_torchmetrics_matches_numpy() -> None:
    a, b = gaussian(1500, 6), gaussian(1200, 7, shift=0.3, scale=1.3)
    reference = fid_numpy(a, b)
    assert reference > 1
    assert fid_torchmetrics(a, b) == pytest.approx(reference, rel=1e-3)
    # also through torch tensors in float32
    assert fid_torchmetrics(torch.tensor(a, dtype=torch.float32), torch.tensor(b)) == pytest.approx(reference, rel=1e-3)


def test_fid_finite_for_singular_covariance() -> None:
    # dead ReLU units: constant zero columns make both covariances singular
    a, b = gaussian(300, 8), gaussian(300, 9, shift=0.5)
    a[:, :4] = 0.0
    b[:, :4] = 0.0
    value = fid_numpy(a, b)
    assert np.isfinite(value) and value > 0
    assert fid_torchmetrics(a, b) == pytest.approx(value, rel=1e-3)


def test_feature_stats_matches_definition() -> None:
    x = gaussian(50, 10, d=3)
    mu, sigma = feature_stats(x)
    centred = x - x.mean(0)
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(sigma, centred.T @ centred / 49)


def test_fid_spread_bootstrap_and_subsets() -> None:
    a, b = gaussian(1000, 11), gaussian(1000, 12, shift=0.5)
    full = fid_numpy(a, b)
    mean, std = fid_spread(a, b, subsets=5, seed=0)
    assert 0 < std < 0.2 * full
    assert mean == pytest.approx(full, rel=0.2)
    assert fid_spread(a, b, subsets=5, seed=0) == (mean, std)  # seeded
    sub_mean, _ = fid_spread(a, b, subsets=3, seed=0, subset_size=200)
    assert sub_mean > full  # FID is biased upwards at small N
    with pytest.raises(ValueError, match="subset_size"):
        fid_spread(a, b, subset_size=5000)


# ---------------------------------------------------------------------------- KID
def test_kid_near_zero_for_same_distribution_large_for_shift() -> None:
    a, b = gaussian(600, 13), gaussian(600, 14)
    same_mean, same_std = kid(a, b, subset_size=200, subsets=20, seed=0)
    shift_mean, _ = kid(a, gaussian(600, 15, shift=1.0), subset_size=200, subsets=20, seed=0)
    assert abs(same_mean) < 0.05
    assert 0 < same_std < 0.05  # the spread over subsets (200 of 600 rows: they differ), small for one distribution
    whole = kid(a, b, subset_size=600, subsets=3, seed=0)  # every subset is the whole set: no spread
    assert whole[1] == pytest.approx(0.0, abs=1e-9)
    assert shift_mean > 10 * max(abs(same_mean), 0.01)


def test_kid_is_seeded_and_leaves_global_rng_alone() -> None:
    a, b = gaussian(300, 16), gaussian(300, 17, shift=0.5)
    torch.manual_seed(99)
    expected_next = torch.rand(1)
    torch.manual_seed(99)
    first = kid(a, b, subset_size=100, subsets=5, seed=3)
    assert torch.rand(1) == expected_next
    assert kid(a, b, subset_size=100, subsets=5, seed=3) == first
    assert kid(a, b, subset_size=100, subsets=5, seed=4) != first
    with pytest.raises(ValueError, match="subset_size"):
        kid(a, b, subset_size=301)


# ---------------------------------------------------------------------------- precision / recall
def naive_pr(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """Straight-from-the-papers reference on full distance matrices."""
    d_rr = np.linalg.norm(real[:, None] - real[None], axis=-1)
    d_ff = np.linalg.norm(fake[:, None] - fake[None], axis=-1)
    d_rf = np.linalg.norm(real[:, None] - fake[None], axis=-1)  # (N, M)
    r_rad = np.sort(d_rr, axis=1)[:, k]  # column 0 is the point itself
    f_rad = np.sort(d_ff, axis=1)[:, k]
    inside_real = d_rf <= r_rad[:, None]  # fake j in real ball i
    return {
        "precision": inside_real.any(0).mean(),
        "recall": (d_rf <= f_rad[None, :]).any(1).mean(),
        "density": inside_real.sum() / (k * len(fake)),
        "coverage": (d_rf.min(1) <= r_rad).mean(),
    }


def test_precision_recall_matches_naive_reference_with_chunking() -> None:
    real, fake = gaussian(230, 18, d=4), gaussian(170, 19, shift=0.4, scale=0.8, d=4)
    got = precision_recall(real, fake, k=3, chunk=64)  # several chunks, ragged last one
    want = naive_pr(real, fake, 3)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    assert 0 < got["precision"] < 1 and 0 < got["recall"] < 1


def test_knn_radii_excludes_self() -> None:
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    torch.testing.assert_close(knn_radii(x, k=1), torch.tensor([1.0, 1.0, 2.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(knn_radii(x, k=2, chunk=3), torch.tensor([3.0, 2.0, 3.0, 6.0], dtype=torch.float64))


def test_precision_recall_real_vs_real_near_one() -> None:
    real = gaussian(800, 20)
    identical = precision_recall(real, real)
    assert identical["precision"] == 1.0 and identical["recall"] == 1.0 and identical["coverage"] == 1.0
    other = precision_recall(real, gaussian(800, 21))
    assert other["precision"] > 0.6 and other["recall"] > 0.6 and other["coverage"] > 0.8
    assert 0.6 < other["density"] < 1.4


def test_mode_collapse_has_recall_and_coverage_near_zero() -> None:
    real = gaussian(800, 22)
    collapsed = np.repeat(real.mean(0, keepdims=True), 800, axis=0)  # one in-distribution point
    result = precision_recall(real, collapsed)
    assert result["precision"] == 1.0  # the point is typical: fidelity is perfect ...
    assert result["recall"] < 0.01  # ... but diversity is gone
    assert result["coverage"] < 0.05


def test_precision_near_zero_for_far_fakes() -> None:
    result = precision_recall(gaussian(400, 23), gaussian(400, 24, shift=10.0))
    assert result == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_precision_recall_rejects_dim_mismatch() -> None:
    with pytest.raises(ValueError, match="feature dims"):
        precision_recall(gaussian(10, 0, d=3), gaussian(10, 0, d=4))


# ---------------------------------------------------------------------------- classifier
SPEC = DataSpec(channels=1, height=16, width=16, num_classes=4)
TINY = ClassifierConfig(width=8, feature_dim=16, lr=3e-3, batch_size=64, seed=0)


def square_images(n: int, seed: int, spec: DataSpec = SPEC) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images with a bright square in a class-dependent quadrant, on noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, spec.num_classes, (n,), generator=gen)
    images = torch.rand(n, spec.channels, spec.height, spec.width, generator=gen) * 0.6 - 1  # dark noise in [-1, -0.4]
    half_h, half_w = spec.height // 2, spec.width // 2
    for i, label in enumerate(labels.tolist()):
        top, left = (label // 2) * half_h, (label % 2) * half_w
        images[i, :, top + 2 : top + half_h - 2, left + 2 : left + half_w - 2] = 0.9
    return to_uint8(images), labels


def as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1


@pytest.fixture(scope="module")
def trained() -> Classifier:
    images, labels = square_images(640, seed=0)
    clf = Classifier(TINY, SPEC)
    for _ in range(2):
        for start in range(0, 640, 64):
            out = clf.train_step(as_float(images[start : start + 64]), labels[start : start + 64])
    assert set(out) == {"loss", "acc"}
    assert not out["loss"].requires_grad and out["loss"].dim() == 0
    return clf


def test_classifier_learns_separable_squares(trained: Classifier) -> None:
    images, labels = square_images(200, seed=1)  # held out
    accuracy = (trained.embed_and_predict(as_float(images))[1] == labels).float().mean()
    assert accuracy > 0.95
    assert trained.step == 20


def test_classifier_loss_falls() -> None:
    images, labels = square_images(128, seed=2)
    clf = Classifier(TINY, SPEC)
    first = float(clf.train_step(as_float(images[:64]), labels[:64])["loss"])
    for _ in range(8):
        last = float(clf.train_step(as_float(images), labels)["loss"])
    assert last < 0.5 * first


def test_classifier_init_is_seeded_and_rng_neutral() -> None:
    torch.manual_seed(5)
    expected_next = torch.rand(1)
    torch.manual_seed(5)
    a, b = Classifier(TINY, SPEC), Classifier(TINY, SPEC)
    assert torch.rand(1) == expected_next
    assert a.checksum() == b.checksum()
    assert Classifier(TINY.model_copy(update={"seed": 1}), SPEC).checksum() != a.checksum()


def test_net_shapes_for_28_and_32_pixels() -> None:
    for size in (28, 32):
        net = ClassifierNet(DataSpec(height=size, width=size), width=4, feature_dim=12)
        x = torch.zeros(3, 1, size, size)
        assert net.embed(x).shape == (3, 12) and net(x).shape == (3, 10)
    with pytest.raises(ValueError, match="multiple of 4"):
        ClassifierNet(DataSpec(height=30, width=30), width=4, feature_dim=12)


def test_feature_extractor_is_frozen_deterministic_snapshot(trained: Classifier) -> None:
    images, _ = square_images(40, seed=3)
    extractor = trained.feature_extractor()
    assert isinstance(extractor, FeatureExtractor) and extractor.num_features == 16
    extractor.train()  # torchmetrics calls this; batch norm must stay in eval mode
    assert not extractor.net.training
    first = extractor(images)
    assert first.shape == (40, 16) and first.dtype == torch.float32
    torch.testing.assert_close(extractor(images), first, rtol=0, atol=0)
    torch.testing.assert_close(first, trained.embed_and_predict(as_float(images))[0])
    # a snapshot: training the classifier further changes neither its weights nor its checksum
    checksum = extractor.checksum()
    clone = Classifier(TINY, SPEC)
    clone.load_state_dict(trained.state_dict())
    snapshot = clone.feature_extractor()
    clone.train_step(as_float(images), torch.zeros(40, dtype=torch.int64))
    assert snapshot.checksum() == checksum != clone.checksum()


def test_batched_features_match_one_pass(trained: Classifier) -> None:
    images, _ = square_images(50, seed=4)
    extractor = trained.feature_extractor()
    feats = apply_batched(extractor, images.numpy(), batch_size=16)
    assert feats.dtype == np.float64 and feats.shape == (50, 16)
    np.testing.assert_allclose(feats, extractor(images).double().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="uint8"):
        apply_batched(extractor, as_float(images), batch_size=16)


def test_feature_extractor_plugs_into_torchmetrics(trained: Classifier) -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, _ = square_images(120, seed=5)
    fake, _ = square_images(120, seed=6)
    extractor = trained.feature_extractor()
    metric = FrechetInceptionDistance(feature=extractor)  # num_features avoids the 3x299x299 probe
    metric.update(real, real=True)
    metric.update(fake, real=False)
    direct = float(metric.compute())
    via_features = fid_torchmetrics(apply_batched(extractor, real), apply_batched(extractor, fake))
    assert direct == pytest.approx(via_features, rel=1e-3)


def test_state_checksum() -> None:
    state = {"b": torch.ones(3), "a": torch.arange(4, dtype=torch.float32)}
    value = state_checksum(state)
    assert re.fullmatch(r"[0-9a-f]{16}", value), value  # 16 lower-case hex digits (int(v, 16) >= 0 held for any)
    assert state_checksum(dict(reversed(state.items()))) == value  # key order does not matter
    assert state_checksum({**state, "b": torch.tensor([1.0, 1.0, 1.0 + 1e-6])}) != value
    assert state_checksum({**state, "b": torch.ones(3, dtype=torch.float64)}) != value
    assert state_checksum({"c": state["b"], "a": state["a"]}) != value


# ---------------------------------------------------------------------------- conditional
def test_conditional_accuracy_of_real_data_is_classifier_accuracy(trained: Classifier) -> None:
    images, labels = square_images(150, seed=7)
    labels[:30] = (labels[:30] + 1) % 4  # mislabel some so the accuracy is not trivially 1
    extractor = trained.feature_extractor()
    predicted = apply_batched(extractor.classify, images, batch_size=40).argmax(axis=1)
    independent = float((trained.embed_and_predict(as_float(images))[1] == labels).double().mean())
    assert conditional_accuracy(predicted, labels) == pytest.approx(independent, abs=1e-12)
    assert classifier_accuracy(extractor.classify, images, labels, batch_size=64) == pytest.approx(
        independent, abs=1e-12
    )
    assert 0.7 < independent < 0.85


def test_conditional_accuracy_values() -> None:
    assert conditional_accuracy(np.array([0, 1, 2, 3]), torch.tensor([0, 1, 0, 0])) == 0.5
    with pytest.raises(ValueError):
        conditional_accuracy(np.array([0, 1]), np.array([0, 1, 2]))
