"""The Soft Nearest Neighbor Loss by the dense formula in plain (differentiable) torch ops.

The path of higher-order gradients, torch.func transforms and ``torch.compile``
(:func:`snnl.loss.soft_nearest_neighbor_loss` takes it there), of SNNL*'s second
derivatives (the implicit T*), and of a temperature step's closed-form slope over the
loss's block logits. One N x N distance matrix (:class:`DensePairs`) serves the terms
and their derivatives in log T. The public functions are re-exported by
:mod:`snnl.loss`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from snnl import _blocked

__all__ = [
    "DensePairs",
    "MiniBatchBlock",
    "mini_batch_block",
    "dense_derivatives",
    "dense_log_temperature_derivatives",
    "dense_pairs",
    "dense_snnl_terms",
    "dense_snnl_terms_at_optimum",
    "dense_terms",
    "implicit_log_temperature",
    "implicit_log_temperature_of_pairs",
    "pairs_of",
]


def dense_snnl_terms(
    points: Tensor, temperature: Tensor, labels: Tensor, euclidean: bool
) -> tuple[Tensor, Tensor]:
    r"""Per-anchor SNNL terms by the dense formula in plain (differentiable) torch ops.

    :math:`\ell_i = \log \sum_{k \ne i} e^{-d_{ik}/T} - \log \sum_{j \ne i, y_j = y_i}
    e^{-d_{ij}/T}` with d the squared Euclidean distance (centred, |a|^2 + |b|^2 - 2ab) or,
    for unit vectors, 1 - cos. Memory O(N^2); the precision of ``points``' dtype (no
    float64 spot check). This is the path of higher-order gradients, torch.func
    transforms (grad, vmap, jacrev) and ``torch.compile``: every op composes with them.

    Args:
        points: (N, D) float32/float64 (unit vectors for cosine).
        temperature: 0-dim tensor of ``points``' dtype.
        labels: (N,) integer classes.
        euclidean: squared Euclidean (True) or cosine on unit vectors (False).

    Returns:
        (terms (N,), valid (N,) bool): anchors without a positive have ``valid`` False and
        a finite placeholder term (its gradient is finite, so masking it keeps NaN away).

    Example:
        >>> x = torch.tensor([[0.0], [0.1], [5.0], [5.2]], dtype=torch.float64)
        >>> terms, valid = dense_snnl_terms(x, torch.tensor(1.0, dtype=torch.float64),
        ...                                 torch.tensor([0, 0, 1, 2]), True)
        >>> valid.tolist(), round(float(terms[0]), 6)
        ([True, True, False, False], 0.0)
    """
    pairs = dense_pairs(points, labels, euclidean)
    return dense_terms(pairs, temperature), pairs.valid


class DensePairs(NamedTuple):
    """The dense formula's pairs: distances d (N, N), the diagonal, the positives (with a
    placeholder row for anchors without one) and valid (N,): what every temperature's
    terms and derivatives share (one N x N x D product)."""

    d: Tensor
    eye: Tensor
    pos: Tensor
    valid: Tensor


def dense_pairs(points: Tensor, labels: Tensor, euclidean: bool) -> DensePairs:
    if euclidean:
        xc = points - points.detach().mean(0)  # d is translation-invariant: exact gradient
        sq = (xc * xc).sum(1)
        d = (sq[:, None] + sq[None, :] - 2.0 * (xc @ xc.T)).clamp_min(0.0)
    else:
        d = 1.0 - points @ points.T
    return pairs_of(d, labels)


def pairs_of(d: Tensor, labels: Tensor) -> DensePairs:
    """The pairs of distances ``d`` (N, N): a row constant added to d changes no
    derivative in log T (the softmax moments' means shift together)."""
    eye = torch.eye(d.shape[0], dtype=torch.bool, device=d.device)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    valid = pos.any(1)
    pos = pos | (~valid[:, None] & ~eye)  # rows without a positive: a finite placeholder
    return DensePairs(d, eye, pos, valid)


def dense_terms(pairs: DensePairs, temperature: Tensor) -> Tensor:
    """Per-anchor terms (N,) at ``temperature`` (see :func:`dense_snnl_terms`)."""
    logits = -pairs.d / temperature
    ninf = torch.full((), -math.inf, dtype=logits.dtype, device=logits.device)
    den = torch.logsumexp(torch.where(pairs.eye, ninf, logits), 1)
    num = torch.logsumexp(torch.where(pairs.pos, logits, ninf), 1)
    return den - num


def dense_log_temperature_derivatives(
    points: Tensor, temperature: Tensor, labels: Tensor, euclidean: bool
) -> tuple[Tensor, Tensor]:
    r"""Per-anchor first and second derivatives of the SNNL terms in u = log T, by the
    dense formula in plain (differentiable) torch ops.

    With :math:`z_{ik} = -d_{ik}/T` (so :math:`\partial z/\partial u = -z`), a log-sum-exp
    over a set S has :math:`\partial_u = -E_S[z]` and :math:`\partial_u^2 = Var_S(z) +
    E_S[z]` under its softmax weights; :math:`\ell_i` = den (k != i) - num (positives):

    .. math::
        \partial_u \ell_i = E_{num}[z] - E_{den}[z], \quad
        \partial_u^2 \ell_i = Var_{den}(z) + E_{den}[z] - Var_{num}(z) - E_{num}[z]

    Args and the placeholder of anchors without a positive: as :func:`dense_snnl_terms`.

    Returns:
        (first (N,), second (N,), valid (N,) bool).

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [3.0], [4.5]], dtype=torch.float64)
        >>> t = torch.tensor(2.0, dtype=torch.float64)
        >>> g, h, _ = dense_log_temperature_derivatives(x, t, torch.tensor([0, 0, 1, 1]), True)
        >>> u = torch.tensor(math.log(2.0), dtype=torch.float64, requires_grad=True)
        >>> ell = dense_snnl_terms(x, u.exp(), torch.tensor([0, 0, 1, 1]), True)[0].sum()
        >>> (dg,) = torch.autograd.grad(ell, u)
        >>> bool(torch.isclose(g.sum(), dg))
        True
    """
    pairs = dense_pairs(points, labels, euclidean)
    return (*dense_derivatives(pairs, temperature), pairs.valid)


def dense_derivatives(pairs: DensePairs, temperature: Tensor) -> tuple[Tensor, Tensor]:
    """Per-anchor (first, second) derivatives in log T at ``temperature``."""
    logits = -pairs.d / temperature

    def moments(mask: Tensor) -> tuple[Tensor, Tensor]:
        z = torch.where(mask, logits, 0.0)
        p = torch.softmax(torch.where(mask, logits, -math.inf), 1)
        mean = (p * z).sum(1)
        return mean, (p * (z - mean[:, None]) ** 2).sum(1)

    mean_den, var_den = moments(~pairs.eye)
    mean_num, var_num = moments(pairs.pos)
    return mean_num - mean_den, var_den + mean_den - var_num - mean_num


def implicit_log_temperature(
    points: Tensor,
    temperature: Tensor,
    labels: Tensor,
    euclidean: bool,
    weights: Tensor | None = None,
) -> Tensor:
    r"""log T* as a differentiable function of the points, to first order: value log T* of
    :math:`S(x, u) = \sum_i w_i \ell_i` (u = log T), derivative
    :math:`-\partial_x\partial_u S / \partial_u^2 S` (the implicit function theorem).

    :math:`S(x, u(x))` then has the value and gradient of :math:`S^*(x) = \min_u S` (the
    envelope theorem: :math:`\partial_u S = 0` at T*) and its Hessian
    :math:`H_{xx} - H_{xu} H_{ux} / H_{uu}`, the exact second derivatives of SNNL*.
    ``temperature`` is a search's T* (good to 1e-8 to 2e-7 in log T, its value being
    flat there): one Newton step on the dense derivatives first puts it at the minimiser
    to rounding, since the Hessian's error is :math:`\partial_u S` times a second
    derivative of u. A ``temperature`` more than 1e-3 in log T from a minimum, or where
    :math:`\partial_u^2 S \le 0` (no strict minimum), is held fixed (no term added).
    ``weights`` (N,) those of the reduction; None: the mean over anchors with a positive.
    """
    pairs = dense_pairs(points, labels, euclidean)
    return implicit_log_temperature_of_pairs(pairs, temperature, weights)


def implicit_log_temperature_of_pairs(
    pairs: DensePairs, temperature: Tensor, weights: Tensor | None
) -> Tensor:
    if weights is None:
        weights = pairs.valid.to(pairs.d.dtype) / pairs.valid.sum().clamp_min(1)
    u0 = temperature.detach().log()
    fixed = pairs._replace(d=pairs.d.detach())
    first, second = dense_derivatives(fixed, u0.exp())
    slope0, curvature0 = (weights * first).sum(), (weights * second).sum()
    polish = -slope0 / torch.where(curvature0 > 0, curvature0, 1.0)
    near = (curvature0 > 0) & (polish.abs() < 1e-3)
    u1 = torch.where(near, u0 + polish, u0)
    first, second = dense_derivatives(pairs, u1.exp())
    slope = (weights * first).sum()
    curvature = (weights * second).sum().detach()
    use = near & (curvature > 0)
    step = (slope - slope.detach()) / torch.where(use, curvature, 1.0)
    return u1 - torch.where(use, step, 0.0)


def dense_snnl_terms_at_optimum(
    points: Tensor,
    temperature: Tensor,
    labels: Tensor,
    euclidean: bool,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`dense_snnl_terms` at :func:`implicit_log_temperature` of the points (T* moving
    with them: SNNL*'s second derivatives), from one distance matrix."""
    pairs = dense_pairs(points, labels, euclidean)
    u = implicit_log_temperature_of_pairs(pairs, temperature, weights)
    return dense_terms(pairs, u.exp()), pairs.valid


class MiniBatchBlock(NamedTuple):
    """A mini-batch's one loss block at T = 1 (:class:`snnl._blocked.BlockLogits`: the
    points in kernel units, sorted by class, and their logits) with its sorted batch: a
    temperature rule takes its slope or its T* from it, then the loss at that T reuses
    it (:func:`snnl.loss.soft_nearest_neighbor_loss_at_chosen_temperature`)."""

    logits: _blocked.BlockLogits
    batch: _blocked.SortedBatch

    def log_temperature_slope(self, temperature: float) -> float | None:
        """dSNNL/dlog T (the mean over anchors with a positive) at ``temperature``
        (caller units): the closed form of :func:`dense_log_temperature_derivatives` on
        d - |x_i|^2 in kernel units (a row constant changes no derivative). None for a
        kernel T outside the logits' dtype or a slope that is not finite."""
        block, batch = self.logits, self.batch
        if batch.num_valid == 0:
            return 0.0
        t_kernel = block.prep.kernel_temperature(temperature)
        info = torch.finfo(block.raw.dtype)
        if not info.tiny <= t_kernel <= info.max:
            return None
        pairs = pairs_of(-block.raw, batch.group)
        first, _ = dense_derivatives(pairs, torch.tensor(t_kernel, dtype=block.raw.dtype))
        g = float(torch.where(pairs.valid, first, 0.0).sum()) / batch.num_valid
        return g if math.isfinite(g) else None


def mini_batch_block(
    points: Tensor, batch: _blocked.SortedBatch, euclidean: bool, temperature: float
) -> MiniBatchBlock:
    """The :class:`MiniBatchBlock` of detached ``points`` (N < SYMMETRIC_MIN_POINTS)
    prepared for a loss near ``temperature`` (:func:`snnl._blocked.first_tier_logits`)."""
    prep = _blocked.prepare_points(points, batch, euclidean, temperature)
    return MiniBatchBlock(_blocked.first_tier_logits(prep, temperature, points.dtype), batch)
