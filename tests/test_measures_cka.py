"""snnl.measures.linear_cka (biased and unbiased) and cka_estimator, against float64
references written here: the HSIC formula with a centring matrix (biased), Song et al.'s
HSIC_1 with explicit loops and Kornblith et al.'s unbiased centring of the Gram matrices
(unbiased)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from snnl.measures import cka_estimator, linear_cka


def _biased_reference(x: np.ndarray, y: np.ndarray) -> float:
    """HSIC_0(K, L) / sqrt(HSIC_0(K, K) HSIC_0(L, L)), K = X X^T, HSIC_0 = tr(K H L H)."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T

    def hsic(p, q):
        return np.trace(p @ h @ q @ h)

    return hsic(k, l_) / math.sqrt(hsic(k, k) * hsic(l_, l_))


def _hsic1_loops(k: np.ndarray, l_: np.ndarray) -> float:
    """Song et al. (2012), HSIC_1, with explicit loops over the zero-diagonal Gram matrices."""
    n = len(k)
    kt, lt = k.copy(), l_.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one = np.ones(n)
    term1 = sum(kt[i, j] * lt[j, i] for i in range(n) for j in range(n))
    term2 = (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (one @ kt @ lt @ one)
    return (term1 + term2 - term3) / (n * (n - 3))


def _unbiased_centring_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al.'s reference route (center_gram(unbiased=True), then the cosine of
    the centred Gram matrices): another computation of the same estimator."""

    def centre(gram):
        n = len(gram)
        gram = gram.copy()
        np.fill_diagonal(gram, 0.0)
        means = gram.sum(0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0.0)
        return gram

    k, l_ = centre(x @ x.T), centre(y @ y.T)
    return float((k * l_).sum() / (np.linalg.norm(k) * np.linalg.norm(l_)))


def _pair(seed: int, n: int, d_a: int, d_b: int):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d_a, generator=g)
    b = torch.tanh(a @ torch.randn(d_a, d_b, generator=g)) + 0.3 * torch.randn(n, d_b, generator=g)
    return a, b


def test_biased_cka_against_the_hsic_formula():
    a, b = _pair(6, 25, 4, 7)
    want = _biased_reference(a.double().numpy(), b.double().numpy())
    assert abs(linear_cka(a, b, estimator="biased") - want) < 1e-10
    assert 0.0 < want < 1.0
    assert linear_cka(a, b) == linear_cka(a, b, estimator="unbiased")  # auto: 7 > 25 / 10


def test_unbiased_cka_against_two_references():
    a, b = _pair(7, 30, 5, 9)
    x = a.double().numpy() - a.double().numpy().mean(0)
    y = b.double().numpy() - b.double().numpy().mean(0)
    k, l_ = x @ x.T, y @ y.T
    loops = _hsic1_loops(k, l_) / math.sqrt(_hsic1_loops(k, k) * _hsic1_loops(l_, l_))
    centred = _unbiased_centring_reference(a.double().numpy(), b.double().numpy())
    assert abs(loops - centred) < 1e-12  # the two references agree
    assert abs(linear_cka(a, b, estimator="unbiased") - loops) < 1e-10
    # HSIC_1 does not need centred inputs; the function's own centring changes nothing
    raw = a.double().numpy(), b.double().numpy()
    assert abs(_unbiased_centring_reference(*raw) - loops) < 1e-10


def test_independent_wide_features_unbiased_near_zero_biased_not():
    """Issue 18: with more features than inputs the biased CKA reads far above 0 for
    independent features (N = 200, D = 300: ~0.6 here; the issue saw 0.31), as the
    study's 300-image probe of 100-784 features did; the unbiased one is ~0 and "auto"
    picks it there."""
    g = torch.Generator().manual_seed(8)
    a, b = torch.randn(200, 300, generator=g), torch.randn(200, 300, generator=g)
    x, y = a.double().numpy(), b.double().numpy()
    biased = linear_cka(a, b, estimator="biased")
    assert abs(biased - _biased_reference(x, y)) < 1e-10 and biased > 0.25
    unbiased = linear_cka(a, b, estimator="unbiased")
    assert abs(unbiased - _unbiased_centring_reference(x, y)) < 1e-10
    assert abs(unbiased) < 0.02
    assert linear_cka(a, b) == unbiased  # "auto" (the default) is unbiased at D > N / 10
    # the study's probe: 300 images, the pixels (784) or hidden layers of 100-400 units
    assert cka_estimator(300, 784, 100) == "unbiased"
    assert cka_estimator(300, 30, 30) == "biased" and cka_estimator(300, 31, 5) == "unbiased"


def test_narrow_features_auto_is_biased_and_both_agree():
    """Many inputs, few features: auto keeps the biased estimator; both read the same
    dependence within a few hundredths."""
    a, b = _pair(9, 400, 3, 4)
    assert cka_estimator(400, 3, 4) == "biased"
    assert linear_cka(a, b) == linear_cka(a, b, estimator="biased")
    assert abs(linear_cka(a, b, estimator="unbiased") - linear_cka(a, b)) < 0.05


def test_bad_inputs_are_named():
    a = torch.randn(10, 3)
    with pytest.raises(ValueError, match="unknown CKA estimator 'other'"):
        linear_cka(a, a, estimator="other")
    with pytest.raises(ValueError, match="same N inputs"):
        linear_cka(a, torch.randn(9, 3))
    with pytest.raises(ValueError, match="at least 2 dimension"):
        linear_cka(torch.randn(10), a)
    with pytest.raises(ValueError, match="N >= 4"):
        linear_cka(a[:3], a[:3], estimator="unbiased")
    assert math.isnan(linear_cka(torch.ones(10, 3), a, estimator="biased"))  # constant
