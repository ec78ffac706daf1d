"""Measures of representations and predictions: the one home for every score we report.

Representations (activations of named layers):

- :func:`layer_snnl_profile`: SNNL at the optimal temperature (SNNL*) of every layer.
- :func:`class_selectivity`, :func:`layer_selectivity`: class selectivity index of
  every unit (Leavitt & Morcos 2020), differentiable.
- :func:`dimensionality`, :func:`participation_ratio` (both at once:
  :func:`linear_dimensionality`): linear dimensionality of a layer's activations (PCA,
  exact, float64).
- :func:`class_clustering`: how much points cluster by class (silhouette, SNNL*).
- :func:`linear_cka` (estimator rule :func:`cka_estimator`): linear CKA similarity of
  two representations of the same inputs, biased or unbiased.

Predictions:

- :func:`accuracy`, :func:`softmax_confidence`, :func:`reliability` (with the
  expected calibration error) and :func:`auroc`.

The input gradient used by attacks stays in :mod:`snnl.attacks`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, silhouette_score
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

from snnl._checks import check_int, check_labels, check_real, check_tensor
from snnl.distances import Distance, check_distance
from snnl.taps import LayerTap, capture, eval_mode, resolve_layers
from snnl.temperature import snnl_star

__all__ = [
    "SELECTIVITY_EPS",
    "layer_snnl_profile",
    "accuracy",
    "softmax_confidence",
    "reliability",
    "auroc",
    "class_clustering",
    "class_selectivity",
    "layer_selectivity",
    "dimensionality",
    "participation_ratio",
    "linear_dimensionality",
    "CKA_ESTIMATORS",
    "cka_estimator",
    "linear_cka",
]

#: The constant in the denominator of the class selectivity index. Leavitt & Morcos's
#: own value was not retrievable; 1e-7 is the one of a public re-implementation.
SELECTIVITY_EPS = 1e-7


# ----------------------------------------------------------------------------- layers


def _layer_names(model: nn.Module, layers: str | Sequence[str]) -> list[str]:
    """Resolved layer names with ``"logits"`` appended once (the model's output)."""
    if isinstance(layers, str) and layers == "hidden":
        names = list(resolve_layers(model, layers))
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
    return [*(n for n in names if n != "logits"), "logits"]


def layer_snnl_profile(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    layers: str | Sequence[str],
    *,
    distance: Distance | str = Distance.EUCLIDEAN,
) -> tuple[dict[str, float], dict[str, float]]:
    """SNNL at the optimal temperature of every named layer and of the logits: the one
    per-layer SNNL* profile (the trainer's health probe and the experiments use it).

    ``SNNL*_l = min_T SNNL(h_l(x), y, T)`` (eq. 2, :func:`snnl.temperature.snnl_star`)
    with ``h_l(x)`` the output of module ``l`` flattened to (N, D_l), taken in eval
    mode (every module's train/eval flag is restored).

    Args:
        model: the network; ``model(x)`` returns logits (N, C).
        x: inputs (N, ...).
        y: integer labels (N,).
        layers: ``"hidden"`` or module names (:func:`snnl.taps.resolve_layers`);
            ``"logits"`` is always measured as well (last).
        distance: "euclidean" (squared) or "cosine".

    Returns:
        ``(snnl, temperature)``: two dicts layer -> float, the layers in order then "logits".

    Example:
        >>> from snnl.models import MLP
        >>> _ = torch.manual_seed(0)
        >>> model = MLP((4,), 3, widths=(8,))
        >>> x, y = torch.rand(30, 4), torch.arange(30) % 3
        >>> snnl, temps = layer_snnl_profile(model, x, y, "hidden")
        >>> list(snnl), all(v >= 0 for v in snnl.values()), list(temps) == list(snnl)
        (['relu1', 'logits'], True, True)
    """
    distance = check_distance(distance)
    y = check_labels(y, x.shape[0] if isinstance(x, Tensor) else None)
    names = _layer_names(model, layers)
    acts = capture(model, x, names)
    snnl: dict[str, float] = {}
    temperature: dict[str, float] = {}
    for name in names:
        star = snnl_star(acts[name], y.to(acts[name].device), distance=distance)
        snnl[name], temperature[name] = float(star.value), star.temperature
    return snnl, temperature


# ----------------------------------------------------------------------------- predictions


def accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 1024) -> float:
    """Fraction of ``x`` (N, ...) that ``model`` classifies as ``y`` (N,).

    ``mean_i [argmax_c f(x_i)_c == y_i]``, in eval mode (flags restored), in batches. An
    input whose logits are not all finite has no prediction and counts as wrong (argmax
    would pick a NaN's index: a diverged model would score by chance).

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
        >>> with torch.no_grad():
        ...     _ = net[1].weight.copy_(torch.eye(2))
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
        >>> accuracy(net, x, torch.tensor([0, 1, 1]))
        0.6666666666666666
    """
    check_int("batch_size", batch_size, low=1)
    y = check_labels(y, x.shape[0] if isinstance(x, Tensor) else None)
    logits = capture(model, x, ["logits"], batch_size=batch_size)["logits"]
    right = (logits.argmax(1) == y.to(logits.device)) & torch.isfinite(logits).all(1)
    return float(right.double().mean())


def softmax_confidence(
    model: nn.Module, x: Tensor, *, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Max softmax probability and predicted class of every input.

    ``confidence_i = max_c softmax(f(x_i))_c`` (softmax in float64), ``prediction_i =
    argmax_c f(x_i)_c``; eval mode, flags restored.

    Returns:
        ``(confidence, prediction)``: numpy arrays (N,), float64 and int64.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
        >>> with torch.no_grad():
        ...     _ = net[1].weight.copy_(torch.eye(2))
        >>> conf, pred = softmax_confidence(net, torch.tensor([[0.0, 0.0], [0.0, 2.0]]))
        >>> conf.round(4).tolist(), pred.tolist()
        ([0.5, 0.8808], [0, 1])
    """
    logits = capture(model, x, ["logits"], batch_size=batch_size)["logits"].double()
    conf, pred = logits.softmax(dim=1).max(dim=1)
    return conf.cpu().numpy(), pred.cpu().numpy()


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Reliability-diagram bins over [0, 1] and the expected calibration error.

    Bin b holds confidences in [b/bins, (b+1)/bins) (the last bin includes 1).
    ``ECE = sum_b (count_b / n) * |correct_b / count_b - confidence_sum_b / count_b|``.

    Args:
        confidence: (N,) confidences in [0, 1].
        correct: (N,) whether each prediction was right (bool or 0/1).
        bins: number of equal-width bins.

    Returns:
        dict with ``bin_edges`` (bins + 1 floats), per-bin ``count``, ``correct`` and
        ``confidence_sum`` (lists) and ``ece`` (float).

    Example:
        >>> r = reliability(np.array([0.05, 0.95, 0.95, 1.0]), np.array([0, 1, 0, 1]), bins=2)
        >>> r["count"], r["correct"], round(r["ece"], 4)
        ([1, 3], [0, 2], 0.2375)
    """
    check_int("bins", bins, low=1)
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if conf.shape != ok.shape or conf.ndim != 1 or conf.size == 0:
        raise ValueError(
            f"confidence and correct must be non-empty 1-D of equal length, got "
            f"{conf.shape} and {ok.shape}"
        )
    idx = np.clip((conf * bins).astype(np.int64), 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    n_correct = np.bincount(idx, weights=ok.astype(np.float64), minlength=bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=bins)
    nz = count > 0
    ece = float(np.sum(np.abs(n_correct[nz] - conf_sum[nz])) / conf.size)
    return {
        "bin_edges": np.linspace(0.0, 1.0, bins + 1).round(6).tolist(),
        "count": count.astype(int).tolist(),
        "correct": n_correct.round().astype(int).tolist(),
        "confidence_sum": conf_sum.round(6).tolist(),
        "ece": ece,
    }


def auroc(clean_scores: np.ndarray, odd_scores: np.ndarray) -> float:
    """AUROC of flagging ``odd`` against ``clean`` by low score (outlier-ness ``-score``).

    Equals ``P(score_odd < score_clean) + 0.5 P(tie)`` over all (clean, odd) pairs:
    1 = every odd input scores lower than every clean one, 0.5 = chance. The scores
    themselves are ranked (negation is exact), so differences of any size count.

    Args:
        clean_scores: (N_clean,) scores of in-distribution inputs (high = normal).
        odd_scores: (N_odd,) scores of outliers or adversarial inputs.

    Example:
        >>> auroc(np.array([0.9, 0.8]), np.array([0.1, 0.85]))
        0.75
        >>> auroc(np.array([1e-17]), np.array([0.0]))
        1.0
    """
    clean = np.asarray(clean_scores, dtype=np.float64).ravel()
    odd = np.asarray(odd_scores, dtype=np.float64).ravel()
    if clean.size == 0 or odd.size == 0:
        raise ValueError(
            f"auroc needs at least one clean and one odd score, got {clean.size} and {odd.size}"
        )
    labels = np.r_[np.zeros(clean.size), np.ones(odd.size)]
    return float(roc_auc_score(labels, -np.r_[clean, odd]))


# ----------------------------------------------------------------------------- clustering


def class_clustering(features: Tensor, labels: Tensor) -> dict[str, float]:
    """Class clustering of ``features`` (N, ...): silhouette by class and SNNL at the optimal T.

    ``silhouette`` (scikit-learn, euclidean, on the features flattened to (N, D) in
    float64) is in [-1, 1], high = clustered by class; ``snnl`` = min_T SNNL(features,
    labels, T) with ``temperature`` its minimiser, low = clustered by class. Used on
    gradient directions (``snnl.experiments.transfer``) and on raw inputs.

    Returns:
        ``{"silhouette": float, "snnl": float, "temperature": float}``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(40) % 2
        >>> tight = class_clustering(torch.randn(40, 3, generator=g) + 10 * y[:, None], y)
        >>> loose = class_clustering(torch.randn(40, 3, generator=g), y)
        >>> tight["silhouette"] > loose["silhouette"], tight["snnl"] < loose["snnl"]
        (True, True)
    """
    f = check_tensor("features", features, min_dim=2).detach().double().flatten(1).cpu()
    y = check_labels(labels, f.shape[0], device="cpu")
    # scikit-learn's OpenMP pool spins against torch's on few cores: one thread
    with threadpool_limits(limits=1):
        sil = float(silhouette_score(f.numpy(), y.numpy(), metric="euclidean"))
    star = snnl_star(f, y)
    return {"silhouette": sil, "snnl": float(star.value), "temperature": star.temperature}


# ----------------------------------------------------------------------------- selectivity


def _units(activations: Tensor) -> Tensor:
    """(N, D) dense units, or (N, C, *spatial) -> (N, C) feature maps averaged over space."""
    a = check_tensor("activations", activations, min_dim=2, floating=True)
    if a.shape[0] == 0 or a[0].numel() == 0:
        raise ValueError(
            f"activations must be non-empty (N, D) or (N, C, ...), got {tuple(a.shape)}"
        )
    a = a.double()
    return a.flatten(2).mean(2) if a.dim() > 2 else a


def class_selectivity(
    activations: Tensor, labels: Tensor, num_classes: int | None = None
) -> Tensor:
    r"""Class selectivity index of every unit (Leavitt & Morcos 2020).

    .. math::
        \mathrm{SI}_u = \frac{\mu_{\max} - \mu_{-\max}}{\mu_{\max} + \mu_{-\max} + \epsilon}

    with ``mu_c`` the mean activation of unit u over the inputs of class c,
    ``mu_max = max_c mu_c`` and ``mu_-max`` the mean of the *other* classes' means,
    ``epsilon =`` :data:`SELECTIVITY_EPS` ``= 1e-7``. Computed in float64, with gradient.

    - Shapes: ``activations`` (N, D) for dense units, or (N, C, H, W) (any
      (N, C, *spatial)) for convolutional units, whose feature map is averaged over
      space first; ``labels`` (N,) of any integer dtype. Returns (units,) float64.
    - Classes: only classes present in ``labels`` count (a class absent from a
      mini-batch is left out of both means); at least two must be present.
      ``num_classes`` validates the labels (``0 <= label < num_classes``) and gives the
      class means a static shape: required under ``torch.compile`` (which cannot trace
      ``torch.unique``), where the label checks are skipped.
    - Meant for post-ReLU (non-negative) activations, where SI is in [0, 1): 0 = the
      same mean response to every class, 1 = responds to one class only (up to
      epsilon). It stays in [0, 1) whenever every class mean is >= 0; when a class
      mean is negative SI is not bounded (the denominator can vanish or change
      sign) and a ``UserWarning`` says so.
    - A dead unit (every class mean 0) gets SI = 0 / epsilon = 0.
    - Gradient: that of the formula, with ``max`` routing the gradient to the
      largest class mean (split evenly between tied maxima).

    Example:
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2])
        >>> acts = torch.tensor([[4.0, 1.0, 0.0], [2.0, 1.0, 0.0], [0.0, 1.0, 0.0],
        ...                      [0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
        >>> class_selectivity(acts, labels).tolist()  # one class only / equal / dead
        [0.9999999666666678, 0.0, 0.0]
        >>> maps = torch.zeros(4, 1, 2, 2); maps[:2, 0, 0, 0] = 4.0; maps[2:] = 1.0
        >>> round(class_selectivity(maps, torch.tensor([0, 0, 1, 1])).item(), 6)  # (1 - 1)/(1 + 1)
        0.0
    """
    a = _units(activations)
    compiling = torch.compiler.is_compiling()  # host reads of the labels are skipped there
    y = check_labels(
        labels, a.shape[0], device=a.device, non_negative=num_classes is not None and not compiling
    )
    if num_classes is not None:  # a static number of class slots: what compile can trace
        slots = check_int("num_classes", num_classes, low=2)
        if not compiling and int(y.max()) >= slots:
            raise ValueError(f"labels must be < num_classes = {slots}, got {int(y.max())}")
        index = y
    elif compiling:
        raise ValueError(
            "class_selectivity under torch.compile needs num_classes (the class means need "
            "a static number of classes; without it the classes present are found by "
            "torch.unique, a data-dependent shape)"
        )
    else:
        classes, index = torch.unique(y, return_inverse=True)
        slots = classes.numel()
    counts = torch.zeros(slots, dtype=a.dtype, device=a.device).index_add(
        0, index, torch.ones_like(index, dtype=a.dtype)
    )
    present = counts > 0
    n_classes = present.sum()
    if not compiling and int(n_classes) < 2:
        found = torch.unique(y).tolist()
        raise ValueError(
            f"class selectivity needs at least two classes present, got {len(found)} ({found})"
        )
    sums = torch.zeros(slots, a.shape[1], dtype=a.dtype, device=a.device)
    means = sums.index_add(0, index, a) / counts.clamp_min(1)[:, None]  # (slots, units)
    # a check on the values: skipped inside torch.func transforms (vmap cannot branch on data)
    if (
        not compiling
        and not torch._C._are_functorch_transforms_active()
        and bool((means.detach() < 0).any())
    ):
        warnings.warn(
            "class_selectivity: a class mean activation is negative, so the index is not "
            "bounded in [0, 1]; it is meant for non-negative (post-ReLU) activations",
            UserWarning,
            stacklevel=2,
        )
    # classes absent from the batch (slots of num_classes) are left out of both means
    mu_max = torch.where(present[:, None], means, -math.inf).amax(0)
    others = (n_classes - 1).clamp_min(1)  # >= 1: checked above, or under compile finite
    mu_rest = (torch.where(present[:, None], means, 0.0).sum(0) - mu_max) / others
    return (mu_max - mu_rest) / (mu_max + mu_rest + SELECTIVITY_EPS)


def layer_selectivity(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    layers: str | Sequence[str] = "hidden",
    *,
    batch_size: int = 512,
) -> dict[str, Tensor]:
    """Class selectivity of every unit of every named layer over a whole dataset.

    Runs ``model`` over ``x`` (N, ...) in batches in eval mode (flags restored, no
    gradient), keeps each layer's units (convolutional feature maps averaged over
    space, as :func:`class_selectivity` does) and returns ``layer -> SI`` of shape
    (units,), float64, on ``x``'s device; the class means are over the whole set.

    Example:
        >>> from snnl.models import MLP
        >>> _ = torch.manual_seed(0)
        >>> model = MLP((4,), 3, widths=(8, 5))
        >>> si = layer_selectivity(model, torch.rand(30, 4), torch.arange(30) % 3)
        >>> {name: tuple(v.shape) for name, v in si.items()}
        {'relu1': (8,), 'relu2': (5,)}
        >>> all(bool(((v >= 0) & (v <= 1)).all()) for v in si.values())
        True
    """
    check_int("batch_size", batch_size, low=1)
    x = check_tensor("x", x)
    y = check_labels(y, x.shape[0])
    names = resolve_layers(model, layers)
    device = next(iter(model.parameters()), x).device
    units: dict[str, list[Tensor]] = {n: [] for n in names}
    with eval_mode(model), torch.no_grad(), LayerTap(model, names) as tap:
        for start in range(0, x.shape[0], batch_size):
            model(x[start : start + batch_size].to(device))
            for n, h in tap.outputs.items():
                units[n].append(_units(h).to(x.device))
    return {n: class_selectivity(torch.cat(u), y) for n, u in units.items()}


# ----------------------------------------------------------------------------- dimensionality


def _pca_variances(activations: Tensor) -> Tensor:
    """Eigenvalues of the covariance of ``activations`` flattened to (N, D), descending.

    float64, centred, divided by N - 1: squared singular values of the centred data
    when N >= D, eigenvalues of the N x N Gram matrix when N < D (same nonzero
    spectrum, cheaper). Tiny negative round-off is clipped to 0.
    """
    a = check_tensor("activations", activations, min_dim=2, floating=True)
    a = a.detach().double().flatten(1)
    n, d = a.shape
    if n < 2 or d == 0:
        raise ValueError(f"need at least 2 points with >= 1 feature, got shape {tuple(a.shape)}")
    centred = a - a.mean(0, keepdim=True)
    if n >= d:
        eig = torch.linalg.svdvals(centred) ** 2
    else:
        eig = torch.linalg.eigvalsh(centred @ centred.T).flip(0).clamp_min(0.0)
    return eig / (n - 1)


def dimensionality(activations: Tensor, variance: float = 0.95) -> int:
    """Number of principal components needed to explain ``variance`` of the activations.

    ``min {k : sum_{i<=k} lambda_i >= variance * sum_i lambda_i}`` with ``lambda`` the
    eigenvalues of the covariance of ``activations`` (N, ...) flattened to (N, D),
    centred, in float64, sorted descending (exact: SVD of the centred data, or the
    N x N Gram matrix when N < D). Constant activations (no variance) give 0.

    Args:
        activations: (N, ...) with N >= 2.
        variance: the share of variance to explain, in (0, 1].

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> scales = torch.tensor([10.0, 1.0, 0.1], dtype=torch.float64)
        >>> x = torch.randn(200, 3, generator=g, dtype=torch.float64) * scales
        >>> dimensionality(x, 0.95), dimensionality(x, 0.999), dimensionality(torch.ones(5, 3))
        (1, 2, 0)
    """
    share = check_real("variance", variance, low=0.0, high=1.0, low_inclusive=False)
    return _components_for(_pca_variances(activations), share)


def _components_for(eig: Tensor, share: float) -> int:
    cumulative = torch.cumsum(eig, 0)
    total = cumulative[-1]
    if float(total) == 0.0:
        return 0
    return int((cumulative / total < share).sum()) + 1


def participation_ratio(activations: Tensor) -> float:
    """Participation ratio ``(sum_i lambda_i)^2 / sum_i lambda_i^2`` of the activations.

    ``lambda`` are the covariance eigenvalues as in :func:`dimensionality`: a value
    between 1 (one direction holds all the variance) and min(N - 1, D) (variance
    spread evenly). Constant activations (no variance) give 0.0.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
        >>> participation_ratio(x), participation_ratio(x * torch.tensor([1.0, 0.0]))
        (2.0, 1.0)
    """
    return _participation(_pca_variances(activations))


def _participation(eig: Tensor) -> float:
    total = eig.sum()
    if float(total) == 0.0:
        return 0.0
    return float(total**2 / (eig**2).sum())


def linear_dimensionality(activations: Tensor, variance: float = 0.95) -> tuple[int, float]:
    """``(dimensionality(activations, variance), participation_ratio(activations))`` from one
    eigen-decomposition (the two functions each compute the spectrum).

    Example:
        >>> x = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
        >>> linear_dimensionality(x, 0.9)
        (1, 1.2195121951219512)
    """
    share = check_real("variance", variance, low=0.0, high=1.0, low_inclusive=False)
    eig = _pca_variances(activations)
    return _components_for(eig, share), _participation(eig)


# ----------------------------------------------------------------------------- similarity

#: Estimators of :func:`linear_cka`: "biased" (Kornblith et al. 2019), "unbiased" (debiased
#: HSIC, Song et al. 2012; Nguyen, Raghu & Kornblith 2021), "auto" (:func:`cka_estimator`).
CKA_ESTIMATORS = ("auto", "biased", "unbiased")


def cka_estimator(n: int, d_a: int, d_b: int, estimator: str = "auto") -> str:
    """The linear CKA estimator to use for N inputs with D_a and D_b features.

    ``"auto"``: ``"unbiased"`` where the features are not much fewer than the inputs,
    ``max(D_a, D_b) > N / 10``, else ``"biased"``. The rule: for independent isotropic
    features the biased estimator reads about ``D / (N + D)`` (measured, N = 300: 0.03 at
    D = 10, 0.09 at D = 30 = N / 10, 0.25 at D = 100, 0.50 at D = 300), so beyond
    N / 10 its floor is no longer small against the similarities being compared; the
    unbiased one reads ~0 there (within 0.002) but has the larger variance, which the
    biased one avoids where its floor is small. ``"biased"`` / ``"unbiased"`` are returned
    as they are.

    Example:
        >>> cka_estimator(300, 100, 10), cka_estimator(300, 10, 10)
        ('unbiased', 'biased')
        >>> cka_estimator(300, 784, 10, "biased")
        'biased'
    """
    if not isinstance(estimator, str) or estimator not in CKA_ESTIMATORS:
        raise ValueError(
            f"unknown CKA estimator {estimator!r}; expected one of: {', '.join(CKA_ESTIMATORS)}"
        )
    if estimator != "auto":
        return estimator
    return "unbiased" if max(d_a, d_b) > n / 10 else "biased"


def _unbiased_hsic(k: Tensor, l_: Tensor) -> Tensor:
    """HSIC_1 of Song et al. (2012), Gram matrices (N, N) with their diagonals set to 0:
    ``[tr(K L) + 1'K1 1'L1 / ((n-1)(n-2)) - 2/(n-2) 1'K L 1] / (n (n-3))``."""
    n = k.shape[0]
    k1, l1 = k.sum(1), l_.sum(1)
    return (
        (k * l_).sum() + k1.sum() * l1.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (k1 @ l1)
    ) / (n * (n - 3))


def linear_cka(a: Tensor, b: Tensor, *, estimator: str = "auto") -> float:
    """Linear centred kernel alignment (Kornblith et al. 2019) of two representations of
    the same N inputs, in float64.

    Biased: ``CKA = ||B^T A||_F^2 / (||A^T A||_F ||B^T B||_F)`` with A (N, D_a), B (N, D_b)
    column-centred, i.e. ``HSIC_0(K, L) / sqrt(HSIC_0(K, K) HSIC_0(L, L))`` with
    ``K = A A^T``, ``L = B B^T``: 1 for representations equal up to rotation and scale,
    but about ``D / (N + D)`` for independent ones. Unbiased: the same ratio of HSIC_1
    (Song et al. 2012: the Gram matrices with zero diagonals; Nguyen, Raghu & Kornblith
    2021), ~0 for independent representations; needs N >= 4. ``estimator``: "biased",
    "unbiased" or "auto" (the rule of :func:`cka_estimator`). NaN where a denominator is
    not positive (a constant representation; for the unbiased one, a tiny N).

    Shapes: a (N, D_a), b (N, D_b) -> float.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> a = torch.randn(50, 3, generator=g)
        >>> q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g))
        >>> b = 2.0 * a @ q  # a rotated and scaled
        >>> [round(linear_cka(a, b, estimator=e), 6) for e in ("biased", "unbiased")]
        [1.0, 1.0]
    """
    a = check_tensor("a", a, min_dim=2)
    b = check_tensor("b", b, min_dim=2)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"a (N, D_a) and b (N, D_b) over the same N inputs needed, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")  # fmt: skip
    n = a.shape[0]
    estimator = cka_estimator(n, a.shape[1], b.shape[1], estimator)
    a = a.double() - a.double().mean(0, keepdim=True)
    b = b.double() - b.double().mean(0, keepdim=True)
    if estimator == "unbiased":
        if n < 4:
            raise ValueError(f"the unbiased CKA needs N >= 4 inputs, got {n}")
        k, l_ = a @ a.T, b @ b.T
        k.fill_diagonal_(0.0)
        l_.fill_diagonal_(0.0)
        den = _unbiased_hsic(k, k) * _unbiased_hsic(l_, l_)
        if float(den) <= 0.0:
            return float("nan")
        return float(_unbiased_hsic(k, l_) / den.sqrt())
    den = torch.linalg.matrix_norm(a.T @ a) * torch.linalg.matrix_norm(b.T @ b)
    if float(den) == 0.0:
        return float("nan")
    return float(torch.linalg.matrix_norm(b.T @ a) ** 2 / den)


# ----------------------------------------------------------------------------- input-unit gradients


def input_gradient_variability(
    model: nn.Module,
    x: Tensor,
    layers: str | Sequence[str] = "hidden",
    *,
    unit_chunk: int = 64,
) -> dict[str, dict[str, float]]:
    """How variable the input-unit gradient is across samples and across units
    (Leavitt & Morcos 2020, "Linking average- and worst-case perturbation robustness").

    ``G[n, u, d] = d a_u(x_n) / d x_{n, d}``: the gradient of unit ``u``'s activation
    (a convolutional feature map averaged over space, as for class selectivity) with
    respect to input ``n``, in eval mode. Per layer (population variances, float64 sums):

    - ``across_samples = mean_{u, d} Var_n G[n, u, d]``
    - ``across_units = mean_{n, d} Var_u G[n, u, d]``
    - ``mean_square = mean_{n, u, d} G[n, u, d]^2`` (the scale, for a scale-free ratio)

    Shapes: x (N, *input_shape) with N >= 2. Cost: one batched backward pass per
    ``unit_chunk`` units of each layer; memory ``unit_chunk * N * input_size`` floats.

    Example:
        >>> from snnl.models import MLP
        >>> _ = torch.manual_seed(0)
        >>> model = MLP((4,), 3, widths=(6, 5))
        >>> v = input_gradient_variability(model, torch.rand(10, 4), ["relu1"])
        >>> sorted(v["relu1"]), v["relu1"]["across_samples"] >= 0
        (['across_samples', 'across_units', 'mean_square'], True)
    """
    check_int("unit_chunk", unit_chunk, low=1)
    x = check_tensor("x", x, floating=True)
    if x.shape[0] < 2:
        raise ValueError(f"input_gradient_variability needs at least 2 samples, got {x.shape[0]}")
    names = resolve_layers(model, layers)
    device = next(iter(model.parameters()), x).device
    xr = x.detach().to(device).requires_grad_(True)
    with eval_mode(model), torch.enable_grad(), LayerTap(model, names) as tap:
        model(xr)
        acts = {n: h.flatten(2).mean(2) if h.dim() > 2 else h for n, h in tap.outputs.items()}
    n_samples = xr.shape[0]
    out: dict[str, dict[str, float]] = {}
    for name, a in acts.items():
        units = a.shape[1]
        samples_sum = torch.zeros((), dtype=torch.float64)
        g_sum = torch.zeros(n_samples, xr[0].numel(), dtype=torch.float64)
        g_sq = torch.zeros_like(g_sum)
        for start in range(0, units, unit_chunk):
            k = min(unit_chunk, units - start)
            basis = torch.zeros(k, *a.shape, dtype=a.dtype, device=a.device)
            basis[torch.arange(k), :, start + torch.arange(k)] = 1.0
            (g,) = torch.autograd.grad(
                a, xr, grad_outputs=basis, is_grads_batched=True, retain_graph=True
            )
            g = g.reshape(k, n_samples, -1).double().cpu()  # (units in chunk, N, D)
            samples_sum += g.var(dim=1, correction=0).sum()
            g_sum += g.sum(0)
            g_sq += (g * g).sum(0)
        per_unit_mean = g_sum / units
        out[name] = {
            "across_samples": float(samples_sum / (units * g_sum.shape[1])),
            "across_units": float((g_sq / units - per_unit_mean**2).clamp_min(0).mean()),
            "mean_square": float(g_sq.sum() / (units * g_sum.numel())),
        }
    return out
