"""Outlier (out-of-distribution) detectors the field compares against.

Every detector has one small interface: ``fit`` on the training set's features
(and labels, where the detector needs them), then ``score`` new inputs; a
**higher score means more in-distribution**, so ``measures.auroc(score(clean),
score(outliers))`` and :func:`fpr_at_tpr` read every detector the same way.

===================  ==========================  ==============================================
detector             reads                       score of one input
===================  ==========================  ==============================================
:class:`MaxSoftmax`  logits f                    ``max_c softmax(f)_c``  (Hendrycks & Gimpel 2017)
:class:`Energy`      logits f                    ``T * logsumexp(f / T)``, minus the free energy
                                                 ``E = -T logsumexp(f / T)``  (Liu et al. 2020)
:class:`Mahalanobis` penultimate features h      ``max_c -(h - mu_c)^T S^-1 (h - mu_c)``, class
                                                 means mu_c, covariance S shared by the classes
                                                 (Lee et al. 2018)
:class:`DeepKNN`     penultimate features h      ``-|| z - z_(k) ||``, z = h / ||h||, z_(k) the
                                                 k-th nearest normalised training feature
                                                 (Sun et al. 2022)
===================  ==========================  ==============================================

Mahalanobis is the paper's single-layer score without input pre-processing and
without its logistic-regression ensemble over layers (both need outlier data to
tune, which a fair comparison must not have); DeepKNN is the paper's score
without its contrastive training. Feature extraction is the caller's: pass the
logits or the layer you want (:func:`snnl.taps.capture`).

>>> import torch
>>> train_h = torch.tensor([[0.0, 0.0], [0.0, 0.2], [4.0, 4.0], [4.0, 4.2]])
>>> train_y = torch.tensor([0, 0, 1, 1])
>>> maha = Mahalanobis().fit(train_h, train_y)
>>> s = maha.score(torch.tensor([[0.0, 0.1], [2.0, 2.1]]))
>>> bool(s[0] > s[1])                      # the point between the classes is odder
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from sklearn.metrics import roc_curve
from torch import Tensor

from snnl._checks import check_int, check_labels, check_positive, check_tensor

__all__ = [
    "OutlierDetector",
    "MaxSoftmax",
    "Energy",
    "Mahalanobis",
    "DeepKNN",
    "fpr_at_tpr",
    "DETECTORS",
]


@runtime_checkable
class OutlierDetector(Protocol):
    """``fit(features, labels) -> self``, then ``score(features) -> (N,)`` float64 scores,
    higher = more in-distribution."""

    name: str

    def fit(self, features: Tensor, labels: Tensor | None = None) -> OutlierDetector: ...

    def score(self, features: Tensor) -> Tensor: ...


def _rows(name: str, x: Tensor) -> Tensor:
    check_tensor(name, x)
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, ...) with N >= 1, got {tuple(x.shape)}")
    x = x.detach().reshape(x.shape[0], -1).double()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} holds non-finite values")
    return x


@dataclass
class MaxSoftmax:
    """Maximum softmax probability of the logits (Hendrycks & Gimpel, ICLR 2017).

    Needs no fitting (``fit`` only returns the detector, for the common interface).

    >>> MaxSoftmax().score(torch.tensor([[0.0, 0.0], [10.0, 0.0]])).tolist()
    [0.5, 0.9999546021312976]
    """

    name: str = "max softmax"

    def fit(self, features: Tensor, labels: Tensor | None = None) -> MaxSoftmax:
        _rows("logits", features)
        return self

    def score(self, features: Tensor) -> Tensor:
        return torch.softmax(_rows("logits", features), dim=1).amax(1)


@dataclass
class Energy:
    """Negative free energy of the logits (Liu, Wang, Owens & Li, NeurIPS 2020).

    ``score = T * logsumexp(f / T)`` (= -E(x; f) with E = -T logsumexp(f / T)); the
    paper's default temperature is 1.

    >>> round(float(Energy().score(torch.tensor([[0.0, 0.0]]))[0]), 6)   # log 2
    0.693147
    """

    temperature: float = 1.0
    name: str = "energy"

    def __post_init__(self) -> None:
        check_positive("temperature", self.temperature)

    def fit(self, features: Tensor, labels: Tensor | None = None) -> Energy:
        _rows("logits", features)
        return self

    def score(self, features: Tensor) -> Tensor:
        t = self.temperature
        return t * torch.logsumexp(_rows("logits", features) / t, dim=1)


@dataclass
class Mahalanobis:
    """Class-conditional Gaussian score with a shared covariance (Lee, Lee, Lee & Shin,
    NeurIPS 2018).

    Fit: ``mu_c`` = mean of class c's features; ``S = 1/N sum_i (h_i - mu_{y_i})
    (h_i - mu_{y_i})^T`` (the tied covariance of the paper, its maximum-likelihood
    estimate). Score: ``max_c -(h - mu_c)^T S^+ (h - mu_c)`` with the pseudo-inverse
    ``S^+`` (features wider than the training set have a singular S).
    """

    name: str = "mahalanobis"
    means: Tensor | None = field(default=None, repr=False)
    precision: Tensor | None = field(default=None, repr=False)

    def fit(self, features: Tensor, labels: Tensor | None = None) -> Mahalanobis:
        h = _rows("features", features)
        if labels is None:
            raise ValueError("Mahalanobis needs the training labels (class means)")
        y = check_labels(labels, h.shape[0]).to(h.device)
        classes = torch.unique(y)
        self.means = torch.stack([h[y == c].mean(0) for c in classes])
        centred = h - self.means[torch.searchsorted(classes, y)]
        cov = centred.T @ centred / h.shape[0]
        self.precision = torch.linalg.pinv(cov, hermitian=True)
        return self

    def score(self, features: Tensor) -> Tensor:
        if self.means is None or self.precision is None:
            raise RuntimeError("call fit(features, labels) before score")
        h = _rows("features", features)
        if h.shape[1] != self.means.shape[1]:
            raise ValueError(
                f"features have {h.shape[1]} dimensions, the fitted ones {self.means.shape[1]}"
            )
        diff = h[:, None, :] - self.means[None, :, :]  # (N, C, D)
        dist = torch.einsum("ncd,de,nce->nc", diff, self.precision, diff)
        return -dist.amin(1)


@dataclass
class DeepKNN:
    """Distance to the k-th nearest training neighbour of L2-normalised features
    (Sun, Ming, Zhu & Li, ICML 2022), searched exactly with faiss.

    ``score = -|| z - z_(k) ||_2`` with ``z = h / ||h||``; the paper uses k = 50 on
    CIFAR-10 (50,000 training images); :func:`default_k` scales it to a training set.
    """

    k: int = 50
    name: str = "deep kNN"
    index: object | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_int("k", self.k, low=1)

    @staticmethod
    def default_k(train_size: int) -> int:
        """The paper's k = 50 for 50,000 training points, scaled to ``train_size`` (>= 1).

        >>> DeepKNN.default_k(50_000), DeepKNN.default_k(4_000)
        (50, 4)
        """
        return max(1, round(50 * train_size / 50_000))

    @staticmethod
    def _normalised(h: Tensor) -> np.ndarray:
        z = h / h.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return np.ascontiguousarray(z.float().cpu().numpy())

    def fit(self, features: Tensor, labels: Tensor | None = None) -> DeepKNN:
        import faiss

        h = _rows("features", features)
        if self.k > h.shape[0]:
            raise ValueError(f"k = {self.k} exceeds the {h.shape[0]} training points")
        z = self._normalised(h)
        index = faiss.IndexFlatL2(z.shape[1])
        index.add(z)
        self.index = index
        return self

    def score(self, features: Tensor) -> Tensor:
        if self.index is None:
            raise RuntimeError("call fit(features) before score")
        z = self._normalised(_rows("features", features))
        if z.shape[1] != self.index.d:  # type: ignore[attr-defined]
            raise ValueError(
                f"features have {z.shape[1]} dimensions, the fitted ones {self.index.d}"  # type: ignore[attr-defined]
            )
        squared, _ = self.index.search(z, self.k)  # type: ignore[attr-defined]
        kth = torch.from_numpy(squared[:, -1].astype(np.float64)).clamp_min(0.0)
        return -kth.sqrt()


#: The standard detectors, by name (logit-based first).
DETECTORS: dict[str, type] = {
    "max_softmax": MaxSoftmax,
    "energy": Energy,
    "mahalanobis": Mahalanobis,
    "deep_knn": DeepKNN,
}


def fpr_at_tpr(clean_scores: np.ndarray, odd_scores: np.ndarray, tpr: float = 0.95) -> float:
    """False-positive rate at a true-positive rate of ``tpr`` (FPR at 95% TPR by default).

    In-distribution inputs are the positives (higher score = in-distribution): the
    threshold is the highest one that keeps at least ``tpr`` of the clean inputs, and
    the result is the share of odd inputs at or above it (the convention of Liu et al.
    2020 and Sun et al. 2022; lower is better).

    >>> fpr_at_tpr(np.arange(100.0), np.array([3.0, 50.0, -1.0, 99.0]))
    0.5
    """
    clean = np.asarray(clean_scores, dtype=np.float64).ravel()
    odd = np.asarray(odd_scores, dtype=np.float64).ravel()
    if clean.size == 0 or odd.size == 0:
        raise ValueError(f"fpr_at_tpr needs clean and odd scores, got {clean.size} and {odd.size}")
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    labels = np.r_[np.ones(clean.size), np.zeros(odd.size)]
    fpr, tpr_curve, _ = roc_curve(labels, np.r_[clean, odd], drop_intermediate=False)
    return float(fpr[np.searchsorted(tpr_curve, tpr - 1e-12, side="left")])
