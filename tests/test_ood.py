"""snnl.ood: each detector against its paper's formula, computed independently."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from snnl.measures import auroc
from snnl.ood import (
    DETECTORS,
    DeepKNN,
    Energy,
    Mahalanobis,
    MaxSoftmax,
    OutlierDetector,
    fpr_at_tpr,
)


def test_max_softmax_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    e = [math.exp(1), math.exp(2), math.exp(3)]
    expected = [e[2] / sum(e), 1 / 3]
    got = MaxSoftmax().fit(logits).score(logits)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-14)


@pytest.mark.parametrize("t", [1.0, 2.5])
def test_energy_is_minus_free_energy(t):
    logits = torch.tensor([[1.0, -2.0, 0.5], [30.0, 29.0, -5.0]])
    expected = [t * math.log(sum(math.exp(v / t) for v in row)) for row in logits.tolist()]
    np.testing.assert_allclose(Energy(t).score(logits).numpy(), expected, rtol=1e-13)


def test_mahalanobis_against_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(60, 3, generator=g, dtype=torch.float64)
    y = torch.arange(60) % 3
    h[y == 1] += 4.0
    test = torch.randn(7, 3, generator=g, dtype=torch.float64) * 3
    # independent: numpy class means, tied covariance, explicit inverse, loop over classes
    hn, yn = h.numpy(), y.numpy()
    means = {c: hn[yn == c].mean(0) for c in range(3)}
    centred = np.stack([hn[i] - means[yn[i]] for i in range(60)])
    inv = np.linalg.inv(centred.T @ centred / 60)
    expected = [max(-(x - means[c]) @ inv @ (x - means[c]) for c in range(3)) for x in test.numpy()]
    got = Mahalanobis().fit(h, y).score(test)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


def test_mahalanobis_needs_labels_and_fit():
    with pytest.raises(ValueError, match="labels"):
        Mahalanobis().fit(torch.randn(4, 2))
    with pytest.raises(RuntimeError, match="fit"):
        Mahalanobis().score(torch.randn(4, 2))


def test_deep_knn_against_sorted_distances():
    g = torch.Generator().manual_seed(1)
    train = torch.randn(40, 5, generator=g)
    test = torch.randn(6, 5, generator=g)
    k = 4
    z = (train / train.norm(dim=1, keepdim=True)).double().numpy()
    q = (test / test.norm(dim=1, keepdim=True)).double().numpy()
    expected = [-np.sort(np.linalg.norm(z - row, axis=1))[k - 1] for row in q]
    got = DeepKNN(k=k).fit(train).score(test)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="exceeds"):
        DeepKNN(k=41).fit(train)


def test_feature_detectors_separate_a_far_cluster():
    g = torch.Generator().manual_seed(2)
    centres = 5.0 * torch.eye(4)[:2]  # class c around 5 e_c; outliers around 5 e_2

    def cloud(labels):
        return centres[labels] + 0.5 * torch.randn(len(labels), 4, generator=g)

    y = torch.arange(200) % 2
    train, clean = cloud(y), cloud(torch.arange(50) % 2)
    odd = 5.0 * torch.eye(4)[2] + 0.5 * torch.randn(50, 4, generator=g)
    for det in (Mahalanobis(), DeepKNN(k=5)):
        assert isinstance(det, OutlierDetector)
        det.fit(train, y)
        assert auroc(det.score(clean).numpy(), det.score(odd).numpy()) > 0.99
    assert set(DETECTORS) == {"max_softmax", "energy", "mahalanobis", "deep_knn"}


def test_fpr_at_tpr_against_a_threshold_sweep():
    rng = np.random.default_rng(3)
    clean, odd = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 200)
    # independent: the highest threshold that keeps >= 95% of the clean scores
    best = max(t for t in np.r_[clean, odd] if np.mean(clean >= t) >= 0.95)
    expected = np.mean(odd >= best)
    assert fpr_at_tpr(clean, odd) == pytest.approx(expected, abs=0)
    assert fpr_at_tpr(clean, odd, tpr=1.0) == np.mean(odd >= clean.min())
    with pytest.raises(ValueError, match="tpr"):
        fpr_at_tpr(clean, odd, tpr=0.0)
