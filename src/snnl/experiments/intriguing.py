"""Experiment "intriguing": Szegedy et al. (2013)'s MNIST study on the embedded real MNIST.

Szegedy, Zaremba, Sutskever, Bruna, Erhan, Goodfellow & Fergus, "Intriguing properties
of neural networks" (ICLR 2014, arXiv:1312.6199), section 4 on MNIST, redone on
``mnist5k`` (5,000 real MNIST images, the zoo's fixed 4,000/1,000 split; the paper
used the 60,000/10,000 MNIST sets).

Models (the paper's Table 1), trained here by a small deterministic loop (Adam, batch
128, seeded initialisation and batch order; lr 1e-3 for the FC models, 1e-2 for the
autoencoder and its softmax), inputs in [0, 1] pixels
(the models' ``Normalize`` is the identity, so the weight decay is in the pixel units
the paper used):

* ``FC10(lambda)``: softmax regression (``MLP`` with no hidden layer). The loss is
  ``mean CE + lambda / 2 * ||W||_F^2`` (weights only, not biases): lambda is the
  coefficient of the usual weight-decay term (its gradient is ``lambda * W``) added
  to the *mean* cross-entropy. With this reading FC10(1) is a heavily shrunk,
  class-mean-like classifier, which is what the paper's 20% test error describes.
* ``FC100-100-10`` and ``FC200-200-10``: ReLU MLPs (the paper does not name the
  activation in what we could read; ReLU is the MLP of :mod:`snnl.models`), weight
  decay (1e-5, 1e-5, 1e-6) on the three weight matrices, the values reproductions
  use (FIELD_NOTES section 7).
* ``AE400-10``: the paper's text, as we recall it (it was not retrievable offline),
  describes a single-layer sparse autoencoder with 400 sigmoid units and a softmax
  classifier on its code, the autoencoder layer not fine-tuned; the seed notes say
  only that the AE is trained without labels. We pre-train
  :class:`snnl.models.AutoencoderClassifier` on reconstruction with the UFLDL sparse
  autoencoder objective, ``mean_i 1/2 ||x_hat_i - x_i||^2 + lambda/2 (||W_enc||^2 +
  ||W_dec||^2) + beta * sum_j KL(rho || rho_hat_j)`` (rho_hat_j the mean code of unit
  j over the batch; lambda 3e-3, beta 3, rho 0.1), then train only the softmax on the
  frozen code, computed once (``mean CE + 1e-4 / 2 ||W||^2``).

One training seed: the verdicts' standard errors are over images, units or model
pairs (each claim states which), not over seeds. Default cost, measured on the shared
2-core machine with one thread: about 80 s of CPU for a fresh run (27 training, 42
L-BFGS, 10 SNNL* and the rest), about 55 s when the saved models are reused.

Measured, per model: train and test error; box-constrained L-BFGS
(:func:`snnl.attacks.lbfgs_search`, its search over c) towards a seeded random wrong
class for a fixed seeded set of test images (the same images and targets for every
model); the success rate and the mean minimal distortion :func:`distortion` over the
successful images. Then the paper's Table 2 (error of every column model on the
examples made for every row model, plus Gaussian noise rows and noise of the same L2
size as each row's perturbations), Table 3 (FC100-100-10 trained on two disjoint
halves of the training set), per-layer upper Lipschitz bounds
(:func:`snnl.lipschitz.layer_bounds`, the style of Table 5), units against random
directions (the top test images of a unit's and of a random direction in a hidden
layer), per-layer SNNL* and the linear CKA between the models' classifier inputs
against how well examples transfer between them.

Trained models are saved under ``out/runs/intriguing`` (state via
:func:`snnl._io.save_torch`, loaded with ``weights_only=True``) next to the config that
produced them, and reused when the saved config equals the one asked for; a differing
saved config is retrained with ``--force`` and is otherwise an error.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import Tensor, nn

from snnl import _io
from snnl.attacks import lbfgs_search
from snnl.data import DataSplits, load_dataset
from snnl.experiments.base import (
    Claim,
    Context,
    Section,
    Verdict,
    compare_groups,
    compare_paired,
)
from snnl.experiments.config import ReproduceConfig
from snnl.experiments.zoo import Kind, RunMismatchError, recipe
from snnl.lipschitz import layer_bounds
from snnl.measures import layer_snnl_profile
from snnl.models import AutoencoderClassifier, ReferenceCNN, build_model
from snnl.taps import capture, eval_mode
from snnl.temperature import optimal_temperature

__all__ = [
    "NAME",
    "TITLE",
    "Settings",
    "ModelSpec",
    "MODELS",
    "HALF_MODELS",
    "settings",
    "run",
    "section",
    "claims",
    "distortion",
    "error_table",
    "gaussian_noise",
    "same_norm_noise",
    "class_purity",
    "top_activating",
    "linear_cka",
    "weight_layer_blocks",
    "train_classifier",
    "pretrain_autoencoder",
    "reconstruction_error",
]

NAME = "intriguing"
TITLE = "Szegedy et al. (2013) on MNIST: adversarial examples, transfer, units, layer bounds"
SOURCE = "Szegedy et al. 2013 (arXiv:1312.6199)"

# ----------------------------------------------------------------------------- the paper

#: Szegedy et al. 2013, Table 1 (MNIST): (train error, test error, mean minimal distortion),
#: errors as fractions. Source: FIELD_NOTES sections 3 and 7 (secondary sources that agree).
PAPER_TABLE1: dict[str, tuple[float, float, float]] = {
    "FC10(1e-4)": (0.067, 0.074, 0.062),
    "FC10(1e-2)": (0.10, 0.094, 0.10),
    "FC10(1)": (0.212, 0.20, 0.14),
    "FC100-100-10": (0.0, 0.0164, 0.058),
    "FC200-200-10": (0.0, 0.0154, 0.065),
    "AE400-10": (0.0057, 0.019, 0.086),
}
#: Szegedy et al. 2013, Table 2: the entries FIELD_NOTES gives (error of the column model
#: on the row model's examples, fractions); the rest were not retrievable.
PAPER_TABLE2: dict[str, dict[str, float]] = {
    "FC10(1e-4)": {"FC100-100-10": 0.02, "AE400-10": 0.027},
    "FC100-100-10": {
        "FC10(1e-4)": 0.289,
        "FC10(1e-2)": 0.137,
        "FC10(1)": 0.211,
        "FC100-100-10": 1.0,
        "FC200-200-10": 0.066,
        "AE400-10": 0.02,
    },
    "gaussian 0.3": {"FC10(1e-4)": 0.156, "FC100-100-10": 0.05, "AE400-10": 0.031},
}


@dataclass(frozen=True)
class ModelSpec:
    """One of Szegedy et al.'s MNIST models.

    ``weight_decay``: the lambda of each weight matrix in forward order (FC) or, for the
    autoencoder model, of its softmax layer (the autoencoder's own is in Settings).
    ``subset``: the training data, ``"all"`` or one of the disjoint halves ``"P1"``/``"P2"``.
    """

    name: str
    model: str  # "mlp" or "autoencoder" (snnl.models.build_model)
    kwargs: tuple[tuple[str, Any], ...]
    weight_decay: tuple[float, ...]
    subset: str = "all"


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("FC10(1e-4)", "mlp", (("widths", ()),), (1e-4,)),
    ModelSpec("FC10(1e-2)", "mlp", (("widths", ()),), (1e-2,)),
    ModelSpec("FC10(1)", "mlp", (("widths", ()),), (1.0,)),
    ModelSpec("FC100-100-10", "mlp", (("widths", (100, 100)),), (1e-5, 1e-5, 1e-6)),
    ModelSpec("FC200-200-10", "mlp", (("widths", (200, 200)),), (1e-5, 1e-5, 1e-6)),
    ModelSpec("AE400-10", "autoencoder", (("code_size", 400),), (1e-4,)),
)
#: Table 3: the same architecture on two disjoint halves of the training set.
HALF_MODELS: tuple[ModelSpec, ...] = (
    replace(MODELS[3], name="FC100-100-10 (P1)", subset="P1"),
    replace(MODELS[3], name="FC100-100-10 (P2)", subset="P2"),
)
#: Hidden layers whose units are compared with random directions.
UNIT_LAYERS: dict[str, str] = {"FC100-100-10": "relu2", "AE400-10": "code"}
RUNS_DIR = ("runs", "intriguing")


@dataclass(frozen=True)
class Settings:
    """Everything that determines the experiment (saved with its results)."""

    seed: int = 0  # model initialisation, batch order, image subsets, targets, noise
    epochs: int = 20  # supervised epochs of every model (the AE: of its softmax)
    ae_pretrain_epochs: int = 10  # reconstruction epochs of the autoencoder
    batch_size: int = 128
    lr: float = 1e-3  # Adam, FC models
    # Adam, the autoencoder and its softmax: at 1e-3 the softmax on the sigmoid code
    # underfit (16.5% train error after 30 epochs, measured)
    ae_lr: float = 1e-2
    ae_weight_decay: float = 3e-3  # lambda of the sparse autoencoder (UFLDL's MNIST value)
    ae_sparsity_weight: float = 3.0  # beta
    ae_sparsity_target: float = 0.1  # rho
    attack_images: int = 50  # seeded test images attacked on every model
    c_init: float = 0.1  # first c of the search (1.0 left 8% of the AE's images unsolved)
    c_steps: int = 8  # L-BFGS solves per image in the search over c
    max_iter: int = 30  # L-BFGS-B iterations per solve (40: distortions within 2%, 1.3x the time)
    attack_batch: int = 50  # images optimised together in one L-BFGS-B solve
    noise_sigmas: tuple[float, ...] = (0.1, 0.3)  # Gaussian-noise rows of Table 2
    top_k: int = 16  # images per unit / direction for the class-purity measure
    shown_directions: int = 3  # units and random directions drawn per model kind
    shown_images: int = 8  # images per drawn unit / direction
    example_images: int = 4  # attacked images drawn with their adversarial versions
    probe_size: int = 300  # test images for SNNL* and CKA


def settings(config: ReproduceConfig) -> Settings:
    """Default: 20 epochs (10 of AE pre-training), 50 attacked images, 30 L-BFGS-B
    iterations per solve; ``--full``: 60 epochs (30), 300 images, 100 iterations.

    ``--epochs`` overrides the supervised and the pre-training epochs.
    """
    full = Settings(epochs=60, ae_pretrain_epochs=30, attack_images=300, max_iter=100)
    base = full if config.full else Settings()
    if config.epochs is not None:
        base = replace(base, epochs=config.epochs, ae_pretrain_epochs=config.epochs)
    return base


# ----------------------------------------------------------------------------- measures


def distortion(x: Tensor, x_adv: Tensor) -> Tensor:
    """Szegedy et al.'s distortion ``sqrt(sum_j (x'_j - x_j)^2 / n)`` per example.

    ``n`` is the number of features of one example (784 for MNIST); pixels in [0, 1].

    Shapes: x, x_adv (N, ...) -> (N,) float64.

    Example:
        >>> x = torch.zeros(2, 1, 2, 2)
        >>> x_adv = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[0.5, 0.5], [0.5, 0.5]]]])
        >>> distortion(x, x_adv)  # sqrt(1 / 4), sqrt(4 * 0.25 / 4)
        tensor([0.5000, 0.5000], dtype=torch.float64)
    """
    if x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv must have one shape, got {tuple(x.shape)} and "
                         f"{tuple(x_adv.shape)}")  # fmt: skip
    if x.ndim < 2:
        raise ValueError(f"x must be a batch (N, ...), got shape {tuple(x.shape)}")
    diff = (x_adv.double() - x.double()).flatten(1)
    return diff.pow(2).mean(dim=1).sqrt()


def _predict(model: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    """argmax of the logits (eval mode, mode restored)."""
    with eval_mode(model), torch.no_grad():
        return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in
                          range(0, x.shape[0], batch_size)])  # fmt: skip


def error_table(
    models: Mapping[str, nn.Module], inputs: Mapping[str, Tensor], y: Tensor
) -> dict[str, dict[str, float]]:
    """``table[row][col]`` = error rate of model ``col`` on the inputs of ``row`` (vs ``y``).

    ``error = mean_i [argmax f_col(inputs[row])_i != y_i]`` (Szegedy et al.'s Table 2:
    rows are the examples made for a model, or noisy inputs; columns the models).

    Example:
        >>> net = nn.Linear(2, 2, bias=False)
        >>> _ = net.weight.data.copy_(torch.eye(2))  # predicts the larger coordinate
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> error_table({"id": net}, {"clean": x, "swapped": x.flip(1)}, torch.tensor([0, 1]))
        {'clean': {'id': 0.0}, 'swapped': {'id': 1.0}}
    """
    table: dict[str, dict[str, float]] = {}
    for row, x in inputs.items():
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"inputs {row!r} hold {x.shape[0]} examples, y holds {y.shape[0]}")
        table[row] = {
            col: float((_predict(model, x) != y).double().mean()) for col, model in models.items()
        }
    return table


def gaussian_noise(x: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    """``clip(x + sigma * z, 0, 1)`` with ``z ~ N(0, I)`` (Table 2's Gaussian rows).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x_noisy = gaussian_noise(torch.full((3, 4), 0.5), 0.1, g)
        >>> bool(((x_noisy >= 0) & (x_noisy <= 1)).all()), x_noisy.shape
        (True, torch.Size([3, 4]))
    """
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return (x + sigma * z.to(x.device)).clamp(0.0, 1.0)


def same_norm_noise(x: Tensor, x_adv: Tensor, generator: torch.Generator) -> Tensor:
    """Noise of the adversarial perturbation's L2 size in a random direction, clipped.

    ``x + ||x_adv - x||_2 * z / ||z||_2`` per example, ``z ~ N(0, I)``, then clipped to
    [0, 1] (clipping can only shorten the perturbation; an example with no perturbation
    stays unchanged).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.full((2, 100), 0.5)
        >>> x_adv = x.clone(); x_adv[0, 0] = 0.8  # norm 0.3 for the first example, 0 for the second
        >>> r = same_norm_noise(x, x_adv, g) - x
        >>> [round(float(v), 4) for v in r.norm(dim=1)]
        [0.3, 0.0]
    """
    r = (x_adv - x).flatten(1)
    z = torch.randn(r.shape, generator=generator, dtype=x.dtype).to(x.device)
    z = z / z.norm(dim=1, keepdim=True)
    return (x + (z * r.norm(dim=1, keepdim=True)).view_as(x)).clamp(0.0, 1.0)


def top_activating(activations: Tensor, directions: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` inputs with the largest projection on each direction.

    ``argtop_k_i <phi(x_i), v>`` for each direction v (Szegedy et al. eq. 1 and 2: a unit
    is ``v = e_j``). Shapes: activations (N, D), directions (K, D) -> (K, k) int64, best
    first (ties: the lower index first).

    Example:
        >>> acts = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
        >>> top_activating(acts, torch.eye(2), 2).tolist()
        [[2, 0], [1, 2]]
    """
    if activations.ndim != 2 or directions.ndim != 2 or activations.shape[1] != directions.shape[1]:
        raise ValueError(f"activations (N, D) and directions (K, D) needed, got "
                         f"{tuple(activations.shape)} and {tuple(directions.shape)}")  # fmt: skip
    scores = directions.double() @ activations.double().T  # (K, N)
    order = torch.argsort(-scores, dim=1, stable=True)
    return order[:, :k]


def class_purity(labels: Tensor, num_classes: int) -> Tensor:
    """Share of the most common class in each row: ``max_c #{j : labels[i, j] = c} / k``.

    Shapes: labels (K, k) int -> (K,) float64.

    Example:
        >>> class_purity(torch.tensor([[3, 3, 1, 3], [0, 1, 2, 3]]), 10).tolist()
        [0.75, 0.25]
    """
    counts = F.one_hot(labels.long(), num_classes).sum(dim=1)  # (K, C)
    return counts.max(dim=1).values.double() / labels.shape[1]


def linear_cka(a: Tensor, b: Tensor) -> float:
    """Linear centred kernel alignment (Kornblith et al. 2019) of two representations.

    ``CKA = ||B^T A||_F^2 / (||A^T A||_F ||B^T B||_F)`` with A (N, D_a), B (N, D_b) the
    column-centred representations of the same N inputs (float64). 1 for
    representations equal up to rotation and scale, 0 for unrelated ones.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> a = torch.randn(50, 3, generator=g)
        >>> q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g))
        >>> round(linear_cka(a, 2.0 * a @ q), 6)
        1.0
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"a (N, D_a) and b (N, D_b) over the same N inputs needed, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")  # fmt: skip
    a = a.double() - a.double().mean(0, keepdim=True)
    b = b.double() - b.double().mean(0, keepdim=True)
    den = torch.linalg.matrix_norm(a.T @ a) * torch.linalg.matrix_norm(b.T @ b)
    if float(den) == 0.0:
        return math.nan
    return float(torch.linalg.matrix_norm(b.T @ a) ** 2 / den)


# ----------------------------------------------------------------------------- training


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[Tensor]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _weight_matrices(model: nn.Module) -> list[Tensor]:
    """The weights of the linear layers ``forward`` uses, in forward order (no decoder)."""
    return [m.weight for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name != "decoder"]  # fmt: skip


def train_classifier(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    weight_decay: Sequence[float],
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> list[float]:
    """Adam on ``mean CE + sum_k lambda_k / 2 * ||W_k||_F^2``; returns the loss per epoch.

    ``W_k``: the weight matrices of the linear layers that ``forward`` uses (a decoder
    is left out), in forward order; ``weight_decay`` holds one lambda per matrix. Every
    parameter is trained. Batches are drawn from a generator seeded with (seed, epoch);
    the loss per epoch is the mean over its batches, weighted by batch size.

    Example:
        >>> from snnl.models import MLP
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.rand(40, 1, 2, 2), torch.arange(40) % 2
        >>> net = MLP((1, 2, 2), 2, widths=())
        >>> h = train_classifier(net, x, y, weight_decay=[1e-3], epochs=3, batch_size=8,
        ...                      lr=1e-2, seed=0)
        >>> len(h), h[-1] < h[0]
        (3, True)
    """
    weights = _weight_matrices(model)
    if len(weight_decay) != len(weights):
        raise ValueError(f"weight_decay needs one lambda per weight matrix ({len(weights)}), "
                         f"got {len(weight_decay)}")  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    model.train()
    for epoch in range(epochs):
        total = 0.0
        for idx in _batches(len(y), batch_size, seed, epoch):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            for lam, w in zip(weight_decay, weights, strict=True):
                loss = loss + 0.5 * lam * w.pow(2).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / len(y))
    model.eval()
    return history


def reconstruction_error(model: AutoencoderClassifier, x: Tensor, batch_size: int = 1000) -> float:
    """``mean_i 1/2 ||x_hat_i - x_i||^2`` of the autoencoder (float64, no gradient)."""
    total = 0.0
    with eval_mode(model), torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size]
            total += float(0.5 * (model.reconstruct(xb) - xb).double().pow(2).flatten(1).sum())
    return total / x.shape[0]


def pretrain_autoencoder(
    model: AutoencoderClassifier,
    x: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    weight_decay: float,
    sparsity_weight: float,
    sparsity_target: float,
) -> list[float]:
    """Adam on the sparse autoencoder objective; returns the reconstruction error per epoch.

    Objective (UFLDL's sparse autoencoder), per batch::

        mean_i 1/2 ||x_hat_i - x_i||^2 + weight_decay / 2 (||W_fc1||^2 + ||W_decoder||^2)
            + sparsity_weight * sum_j KL(rho || rho_hat_j)

    with ``rho = sparsity_target``, ``rho_hat_j`` the batch mean of code unit j and
    ``KL(p || q) = p log(p / q) + (1 - p) log((1 - p) / (1 - q))``. Only the encoder
    (``fc1``) and the decoder are trained. The returned list holds
    :func:`reconstruction_error` on ``x`` before training and after every epoch
    (``epochs + 1`` values).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> ae = AutoencoderClassifier((1, 3, 3), 2, code_size=4)
        >>> h = pretrain_autoencoder(ae, torch.rand(30, 1, 3, 3), epochs=5, batch_size=10,
        ...     lr=1e-2, seed=0, weight_decay=0.0, sparsity_weight=0.0, sparsity_target=0.1)
        >>> len(h), h[-1] < h[0]
        (6, True)
    """
    params = [*model.fc1.parameters(), *model.decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    rho = sparsity_target
    history = [reconstruction_error(model, x)]
    model.train()
    for epoch in range(epochs):
        for idx in _batches(x.shape[0], batch_size, seed, epoch):
            xb = x[idx]
            code = model.encode(xb)
            x_hat = model.reconstruction(model.decoder(code)).view_as(xb)
            loss = 0.5 * (x_hat - xb).pow(2).flatten(1).sum(1).mean()
            loss = loss + 0.5 * weight_decay * (
                model.fc1.weight.pow(2).sum() + model.decoder.weight.pow(2).sum()
            )
            rho_hat = code.mean(0).clamp(1e-6, 1 - 1e-6)
            kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
            loss = loss + sparsity_weight * kl.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        history.append(reconstruction_error(model, x))
    model.eval()
    return history


def _halves(y: Tensor, seed: int) -> dict[str, Tensor]:
    """Two disjoint halves of the training indices, stratified by class (seeded)."""
    g = torch.Generator().manual_seed(seed + 7919)
    first, second = [], []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        first.append(idx[: len(idx) // 2])
        second.append(idx[len(idx) // 2 :])
    return {"P1": torch.cat(first).sort().values, "P2": torch.cat(second).sort().values}


def _data_fingerprint(dataset: DataSplits) -> str:
    h = hashlib.sha256()
    for t in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _model_config(spec: ModelSpec, s: Settings, dataset: DataSplits, fingerprint: str) -> dict:
    config: dict[str, Any] = {
        "name": spec.name,
        "model": spec.model,
        "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in spec.kwargs},
        "weight_decay": list(spec.weight_decay),
        "subset": spec.subset,
        "epochs": s.epochs,
        "batch_size": s.batch_size,
        "lr": s.lr,
        "seed": s.seed,
        "dataset": dataset.name,
        "data_sha256": fingerprint,
    }
    if spec.model == "autoencoder":
        config.update(
            ae_pretrain_epochs=s.ae_pretrain_epochs,
            ae_lr=s.ae_lr,
            ae_weight_decay=s.ae_weight_decay,
            ae_sparsity_weight=s.ae_sparsity_weight,
            ae_sparsity_target=s.ae_sparsity_target,
        )
    return config


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name).strip("_")


def _build(spec: ModelSpec, dataset: DataSplits, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    kwargs = {k: v for k, v in spec.kwargs}
    return build_model(spec.model, dataset.input_shape, dataset.num_classes, **kwargs)


def _train_model(
    spec: ModelSpec, s: Settings, x: Tensor, y: Tensor, dataset: DataSplits
) -> tuple[nn.Module, dict[str, Any]]:
    """Train one model from its seed; returns it and its training record."""
    seed = s.seed * 1000 + [m.name for m in (*MODELS, *HALF_MODELS)].index(spec.name)
    model = _build(spec, dataset, seed)
    record: dict[str, Any] = {}
    if isinstance(model, AutoencoderClassifier):
        record["reconstruction_error"] = pretrain_autoencoder(
            model,
            x,
            epochs=s.ae_pretrain_epochs,
            batch_size=s.batch_size,
            lr=s.ae_lr,
            seed=seed,
            weight_decay=s.ae_weight_decay,
            sparsity_weight=s.ae_sparsity_weight,
            sparsity_target=s.ae_sparsity_target,
        )
        with torch.no_grad():  # the code is not fine-tuned: train the softmax on it alone
            code = model.encode(x)
        record["loss"] = train_classifier(
            model.logits, code, y, weight_decay=spec.weight_decay, epochs=s.epochs,
            batch_size=s.batch_size, lr=s.ae_lr, seed=seed,
        )  # fmt: skip
    else:
        record["loss"] = train_classifier(
            model, x, y, weight_decay=spec.weight_decay, epochs=s.epochs,
            batch_size=s.batch_size, lr=s.lr, seed=seed,
        )  # fmt: skip
    return model, record


def _trained_model(
    spec: ModelSpec,
    s: Settings,
    dataset: DataSplits,
    x: Tensor,
    y: Tensor,
    context: Context,
    fingerprint: str,
) -> tuple[nn.Module, dict[str, Any], bool]:
    """The model of ``spec``: reused from its folder when the saved config matches."""
    folder = context.out.joinpath(*RUNS_DIR)
    state_path = folder / f"{_slug(spec.name)}.pt"
    record_path = folder / f"{_slug(spec.name)}.json"
    config = _model_config(spec, s, dataset, fingerprint)
    if record_path.exists() and state_path.exists():
        saved = json.loads(record_path.read_text())
        if saved.get("config") == config:
            model = _build(spec, dataset, 0)
            model.load_state_dict(torch.load(state_path, weights_only=True))
            model.eval()
            return model, saved["record"], True
        if not context.config.force:
            diff = sorted(
                k for k in {*config, *saved.get("config", {})}
                if saved.get("config", {}).get(k) != config.get(k)
            )  # fmt: skip
            raise RunMismatchError(
                f"{record_path} holds a model {spec.name} trained with a different config "
                f"(differs in {', '.join(diff)}); rerun with --force to retrain it"
            )
        context.log(f"retraining {spec.name} (config changed, --force)")
    else:
        context.log(f"training {spec.name}")
    started = time.perf_counter()
    model, record = _train_model(spec, s, x, y, dataset)
    record["seconds"] = round(time.perf_counter() - started, 3)
    _io.save_torch(state_path, model.state_dict())
    _io.write_json(record_path, {"config": config, "record": record})  # written last
    return model, record, False


# ----------------------------------------------------------------------------- run


def _dataset(context: Context) -> DataSplits:
    """The zoo's data when it is mnist5k (same split as the zoo), else mnist5k itself."""
    if context.config.dataset == "mnist5k":
        return context.zoo.dataset
    return load_dataset(
        "mnist5k", limit_train=context.config.limit_train, limit_test=context.config.limit_test
    )


def _attack_set(dataset: DataSplits, s: Settings) -> tuple[Tensor, Tensor]:
    """Seeded test image indices and a seeded random wrong target class for each."""
    g = torch.Generator().manual_seed(s.seed + 104_729)
    n = min(s.attack_images, len(dataset.y_test))
    idx = torch.randperm(len(dataset.y_test), generator=g)[:n].sort().values
    shift = torch.randint(1, dataset.num_classes, (n,), generator=g)
    return idx, (dataset.y_test[idx] + shift) % dataset.num_classes


def _classifier_input(model: nn.Module, x: Tensor) -> Tensor:
    """What the model's softmax layer reads: its last hidden layer, or the pixels."""
    names = tuple(getattr(model, "hidden_layer_names", ()))
    if not names:
        return x.flatten(1)
    return capture(model, x, [names[-1]])[names[-1]]


def _snnl_profile(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float | None]:
    names = list(getattr(model, "hidden_layer_names", ()))
    snnl, _ = layer_snnl_profile(model, x, y, names)
    return {k: _finite(v) for k, v in snnl.items()}


def _error(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return float((_predict(model, x) != y).double().mean())


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _rounded_images(x: Tensor) -> list[list[float]]:
    return [[round(float(v), 3) for v in img.flatten()] for img in x]


def _units_study(model: nn.Module, layer: str, dataset: DataSplits, s: Settings) -> dict[str, Any]:
    """Top test images of each live unit and of as many random directions; class purity."""
    acts = capture(model, dataset.x_test, [layer])[layer].double()
    live = torch.nonzero(acts.std(dim=0) > 0).flatten()  # units that vary over the test set
    d = acts.shape[1]
    g = torch.Generator().manual_seed(s.seed + 15_485_863)
    random_dirs = torch.randn(len(live), d, generator=g, dtype=torch.float64)
    random_dirs = random_dirs / random_dirs.norm(dim=1, keepdim=True)
    units = torch.eye(d, dtype=torch.float64)[live]
    k = min(s.top_k, acts.shape[0])
    top_units = top_activating(acts, units, k)
    top_random = top_activating(acts, random_dirs, k)
    y = dataset.y_test
    purity_units = class_purity(y[top_units], dataset.num_classes)
    purity_random = class_purity(y[top_random], dataset.num_classes)
    shown_units = torch.randperm(len(live), generator=g)[: s.shown_directions].tolist()
    shown: list[dict[str, Any]] = []
    for kind, picks, top, purity in (
        ("unit", shown_units, top_units, purity_units),
        ("random direction", list(range(min(s.shown_directions, len(live)))), top_random,
         purity_random),
    ):  # fmt: skip
        for j in picks:
            idx = top[j, : s.shown_images]
            label = f"unit {int(live[j])}" if kind == "unit" else f"random direction {j + 1}"
            shown.append({
                "kind": kind,
                "label": label,
                "purity": float(purity[j]),
                "indices": idx.tolist(),
                "labels": y[idx].tolist(),
                "images": _rounded_images(dataset.x_test[idx]),
            })  # fmt: skip
    return {
        "layer": layer,
        "units": d,
        "live_units": len(live),
        "top_k": k,
        "unit_purity": [round(float(v), 6) for v in purity_units],
        "random_purity": [round(float(v), 6) for v in purity_random],
        "shown": shown,
    }


def weight_layer_blocks(bounds: Mapping[str, float], weight_layers: Sequence[str]) -> dict:
    """Group per-layer bounds (forward order) into one block per weight layer.

    Block k = weight layer k times the parameter-free layers after it up to the next
    weight layer (its activation, a flatten); layers before the first weight layer (the
    input normalisation) join the first block. The product of the blocks is the
    product of all bounds.

    Example:
        >>> b = {"normalize": 2.0, "fc1": 3.0, "code": 0.25, "logits": 5.0}
        >>> weight_layer_blocks(b, ["fc1", "logits"])
        {'fc1': 1.5, 'logits': 5.0}
    """
    blocks: dict[str, float] = {}
    pending = 1.0  # layers before the first weight layer
    current: str | None = None
    for name, value in bounds.items():
        if name in weight_layers:
            current = name
            blocks[name] = value * pending
            pending = 1.0
        elif current is None:
            pending *= value
        else:
            blocks[current] *= value
    return blocks


def _layer_bounds(models: Mapping[str, nn.Module], input_shape: tuple[int, ...]) -> dict:
    """Per-layer upper bounds (:func:`snnl.lipschitz.layer_bounds`) and per-weight-layer blocks."""
    out = {}
    for name, model in models.items():
        res = layer_bounds(model, input_shape)
        weights = [n for n, m in model.named_modules()
                   if isinstance(m, (nn.Linear, nn.Conv2d)) and n in res.bounds]  # fmt: skip
        out[name] = {
            "bounds": {k: float(v) for k, v in res.bounds.items()},
            "blocks": weight_layer_blocks(res.bounds, weights),
            "product": float(res.product),
        }
    return out


def _reference_models(context: Context, dataset: DataSplits, seed: int) -> dict[str, nn.Module]:
    """The reference CNN untrained (seeded), and the zoo's normal seed-0 run if it exists."""
    torch.manual_seed(seed)
    models: dict[str, nn.Module] = {
        "ReferenceCNN (untrained)": ReferenceCNN(dataset.input_shape, dataset.num_classes)
    }
    config = recipe(context.config, Kind.NORMAL, 0)
    folder = context.zoo.folder(Kind.NORMAL.value, config)
    results = folder / "results.json"
    if results.exists() and json.loads(results.read_text()).get("config") == asdict(config):
        ref = context.zoo.get(Kind.NORMAL, 0)
        models[f"zoo normal {config.model} (trained)"] = ref.load()
    return models


def run(settings: Settings, context: Context) -> dict[str, Any]:
    """Train (or reuse) the models, attack them, and measure everything the report shows."""
    s = settings
    timings: dict[str, dict[str, float]] = {}
    clock = (time.perf_counter(), time.process_time())
    started = clock

    def lap(phase: str) -> None:  # wall and CPU seconds of the phase that just ended
        nonlocal clock
        now = (time.perf_counter(), time.process_time())
        timings[phase] = {"wall": round(now[0] - clock[0], 2), "cpu": round(now[1] - clock[1], 2)}
        clock = now

    dataset = _dataset(context)
    fingerprint = _data_fingerprint(dataset)
    halves = _halves(dataset.y_train, s.seed)
    models: dict[str, nn.Module] = {}
    records: dict[str, dict[str, Any]] = {}
    for spec in (*MODELS, *HALF_MODELS):
        sel = halves[spec.subset] if spec.subset != "all" else torch.arange(len(dataset.y_train))
        x_tr, y_tr = dataset.x_train[sel], dataset.y_train[sel]
        model, record, reused = _trained_model(spec, s, dataset, x_tr, y_tr, context, fingerprint)
        models[spec.name] = model
        records[spec.name] = {
            "subset": spec.subset,
            "train_size": len(sel),
            "train_error": _error(model, x_tr, y_tr),
            "test_error": _error(model, dataset.x_test, dataset.y_test),
            "train_seconds": record["seconds"],
            "reused": reused,
            "loss": [round(v, 6) for v in record["loss"]],
        }
        if "reconstruction_error" in record:
            records[spec.name]["reconstruction_error"] = [
                round(v, 6) for v in record["reconstruction_error"]
            ]
    lap("train")

    # adversarial examples: the same images and targets for every model
    idx, targets = _attack_set(dataset, s)
    x_att, y_att = dataset.x_test[idx], dataset.y_test[idx]
    adversarial: dict[str, Tensor] = {}
    for name, model in models.items():
        res = lbfgs_search(model, x_att, targets, c_init=s.c_init, c_steps=s.c_steps,
                           max_iter=s.max_iter, batch_size=s.attack_batch)  # fmt: skip
        adversarial[name] = res.x_adv
        dist = distortion(x_att, res.x_adv)
        ok = res.success
        records[name]["attack"] = {
            "success_rate": float(ok.double().mean()),
            "mean_distortion": float(dist[ok].mean()) if bool(ok.any()) else None,
            "distortions": [
                round(float(d), 6) if bool(o) else None for d, o in zip(dist, ok, strict=True)
            ],
        }
    lap("attack")

    # Table 2 and Table 3
    g = torch.Generator().manual_seed(s.seed + 32_452_843)
    table1 = [m.name for m in MODELS]
    halves_names = [m.name for m in HALF_MODELS]

    def rows_for(sources: Sequence[str]) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
        inputs: dict[str, Tensor] = {}
        meta: list[dict[str, Any]] = []
        for src in sources:
            inputs[src] = adversarial[src]
            meta.append({"row": src, "kind": "adversarial", "source": src})
        for sigma in s.noise_sigmas:
            key = f"gaussian {sigma:g}"
            inputs[key] = gaussian_noise(x_att, sigma, g)
            meta.append({"row": key, "kind": "gaussian", "source": sigma})
        for src in sources:
            key = f"noise like {src}"
            inputs[key] = same_norm_noise(x_att, adversarial[src], g)
            meta.append({"row": key, "kind": "same-norm noise", "source": src})
        for m in meta:
            m["distortion"] = float(distortion(x_att, inputs[m["row"]]).mean())
        return inputs, meta

    def table(sources: Sequence[str], columns: Sequence[str]) -> dict[str, Any]:
        inputs, meta = rows_for(sources)
        errors = error_table({c: models[c] for c in columns}, {"clean": x_att, **inputs}, y_att)
        for m in meta:
            m["errors"] = errors[m["row"]]
        return {"columns": list(columns), "clean": errors["clean"], "rows": meta}

    table2 = table(table1, table1)
    table3 = table(halves_names, [*halves_names, "FC100-100-10"])
    lap("tables")

    # representations: SNNL*, CKA between classifier inputs, units vs random directions
    gp = torch.Generator().manual_seed(s.seed + 49_979_687)
    probe = torch.randperm(len(dataset.y_test), generator=gp)[: s.probe_size].sort().values
    x_probe, y_probe = dataset.x_test[probe], dataset.y_test[probe]
    input_snnl = _finite(optimal_temperature(x_probe.flatten(1), y_probe)[1])
    for name, model in models.items():
        records[name]["snnl"] = {"input": input_snnl, **_snnl_profile(model, x_probe, y_probe)}
    reps = {name: _classifier_input(models[name], x_probe) for name in table1}
    pairs = []
    for i, a in enumerate(table1):
        for b in table1[i + 1 :]:
            excess = [
                next(r for r in table2["rows"] if r["row"] == src)["errors"][dst]
                - table2["clean"][dst]
                for src, dst in ((a, b), (b, a))
            ]
            pairs.append({
                "a": a, "b": b, "cka": _finite(linear_cka(reps[a], reps[b])),
                "excess_transfer": sum(excess) / 2,
            })  # fmt: skip
    valid = [p for p in pairs if p["cka"] is not None]
    rho, p_value = spearmanr([p["cka"] for p in valid], [p["excess_transfer"] for p in valid])
    similarity = {
        "representation": "the input of each model's softmax layer (its last hidden layer; "
        "the pixels for softmax regression)",
        "pairs": pairs,
        "spearman": _finite(float(rho)),
        "p_value": _finite(float(p_value)),
    }
    units = {name: _units_study(models[name], layer, dataset, s)
             for name, layer in UNIT_LAYERS.items()}  # fmt: skip
    lap("representations")

    # layer bounds (the paper's Table 5 style)
    bounds = _layer_bounds(
        {**models, **_reference_models(context, dataset, s.seed)}, dataset.input_shape
    )
    lap("bounds")

    # a few attacked images drawn with their adversarial versions
    shown = list(range(min(s.example_images, len(idx))))
    examples = {
        "indices": idx[shown].tolist(),
        "labels": y_att[shown].tolist(),
        "targets": targets[shown].tolist(),
        "original": _rounded_images(x_att[shown]),
        "adversarial": {n: _rounded_images(adversarial[n][shown]) for n in table1},
        "predicted": {n: _predict(models[n], adversarial[n][shown]).tolist() for n in table1},
    }
    now = (time.perf_counter(), time.process_time())
    timings["total"] = {"wall": round(now[0] - started[0], 2), "cpu": round(now[1] - started[1], 2)}
    return {
        "dataset": dataset.name,
        "train_size": len(dataset.y_train),
        "test_size": len(dataset.y_test),
        "table1_models": table1,
        "half_models": halves_names,
        "models": records,
        "attack_set": {
            "indices": idx.tolist(),
            "labels": y_att.tolist(),
            "targets": targets.tolist(),
        },  # fmt: skip
        "table2": table2,
        "table3": table3,
        "similarity": similarity,
        "units": units,
        "layer_bounds": bounds,
        "examples": examples,
        "seconds": timings,
    }


# ----------------------------------------------------------------------------- report


def _pct(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{100 * v:.{digits}f}%"


def _num(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _mean(values: Sequence[float], digits: int = 3) -> str:
    return _num(float(np.mean(values)) if len(values) else None, digits)


def _row(table: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in table["rows"] if r["row"] == name)


def _table_markdown(table: dict[str, Any], paper: Mapping[str, Mapping[str, float]]) -> list[str]:
    cols = table["columns"]
    lines = [
        "| examples made for / noise | " + " | ".join(cols) + " | mean distortion |",
        "|---" * (len(cols) + 2) + "|",
        "| clean (the attacked images) | "
        + " | ".join(_pct(table["clean"][c]) for c in cols)
        + " | 0 |",
    ]
    for r in table["rows"]:
        known = paper.get(r["row"], {})
        cells = []
        for c in cols:
            cell = _pct(r["errors"][c])
            if c in known:
                cell += f" ({_pct(known[c])})"
            cells.append(cell)
        lines.append(f"| {r['row']} | " + " | ".join(cells) + f" | {_num(r['distortion'])} |")
    return lines


def _image(values: Sequence[float]) -> np.ndarray:
    side = int(round(math.sqrt(len(values))))
    return np.asarray(values, dtype=np.float64).reshape(side, side)


def _units_figure(study: dict[str, Any], model: str, path: Path) -> None:
    from snnl.figures import plt, save_figure

    shown = study["shown"]
    cols = max(len(s["images"]) for s in shown)
    fig, axes = plt.subplots(
        len(shown), cols, figsize=(1.1 * cols + 1.6, 1.2 * len(shown)), squeeze=False
    )
    for ax_row, item in zip(axes, shown, strict=True):
        for j, ax in enumerate(ax_row):
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(item["images"]):
                ax.axis("off")
                continue
            ax.imshow(_image(item["images"][j]), cmap="gray_r", vmin=0, vmax=1)
            ax.set_title(str(item["labels"][j]), fontsize=7, pad=1)
        ax_row[0].set_ylabel(
            f"{item['label']}\npurity {item['purity']:.2f}", fontsize=7, rotation=0, ha="right",
            va="center",
        )  # fmt: skip
    fig.suptitle(
        f"{model}, layer {study['layer']}: test images with the largest projection on a unit "
        f"(top rows) and on a random direction (bottom rows); class above each image;\n"
        f"purity: share of the most common class among the top {study['top_k']} images",
        fontsize=8,
    )
    save_figure(fig, path)


def _examples_figure(ex: dict[str, Any], models: Sequence[str], path: Path) -> None:
    from snnl.figures import plt, save_figure

    n = len(ex["original"])
    fig, axes = plt.subplots(n, len(models) + 1, figsize=(1.3 * (len(models) + 1), 1.45 * n),
                             squeeze=False)  # fmt: skip
    for i in range(n):
        panels = [("clean", ex["original"][i], ex["labels"][i])] + [
            (m, ex["adversarial"][m][i], ex["predicted"][m][i]) for m in models
        ]
        for ax, (title, img, pred) in zip(axes[i], panels, strict=True):
            ax.imshow(_image(img), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            d = float(np.sqrt(np.mean((_image(img) - _image(ex["original"][i])) ** 2)))
            label = f"class {pred}" if title == "clean" else f"-> {pred}, d={d:.3f}"
            ax.set_title((f"{title}\n" if i == 0 else "") + label, fontsize=6, pad=1)
    fig.suptitle(f"L-BFGS adversarial examples (target classes {ex['targets']})", fontsize=8)
    save_figure(fig, path)


def _distortion_figure(results: dict[str, Any], path: Path) -> None:
    from snnl.figures import plt, save_figure

    names = [*results["table1_models"], *results["half_models"]]
    data = [
        [d for d in results["models"][n]["attack"]["distortions"] if d is not None] for n in names
    ]
    fig, ax = plt.subplots(figsize=(9, 3.4))
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20, fontsize=7)
    paper = [PAPER_TABLE1.get(n, (None, None, None))[2] for n in names]
    xs = [i + 1 for i, p in enumerate(paper) if p is not None]
    ax.scatter(xs, [p for p in paper if p is not None], marker="x", color="C3", zorder=3,
               label="paper (Table 1 mean)")  # fmt: skip
    ax.set_ylabel("minimal distortion")
    ax.legend(frameon=False, fontsize=7)
    ax.grid(alpha=0.3)
    ax.set_title("Distortion of the successful L-BFGS examples per model (box: quartiles; "
                 "triangle: mean)", fontsize=9)  # fmt: skip
    save_figure(fig, path)


def section(results: dict[str, Any], fig_dir: Path) -> Section:
    """Tables 1-3 next to the paper's numbers, bounds, SNNL*, similarity and the figures."""
    st = results["settings"]
    models = results["models"]
    table1 = results["table1_models"]
    unit_figs = []
    for name, study in results["units"].items():
        file = f"intriguing_units_{_slug(name).lower()}.png"
        _units_figure(study, name, fig_dir / file)
        unit_figs.append((file, f"{name}, layer {study['layer']}: units vs random directions"))
    _examples_figure(results["examples"], table1, fig_dir / "intriguing_examples.png")
    _distortion_figure(results, fig_dir / "intriguing_distortions.png")

    n_att = len(results["attack_set"]["indices"])
    lines = [
        f"Szegedy et al. (2013)'s MNIST models on `{results['dataset']}` "
        f"({results['train_size']} training / {results['test_size']} test images; the paper "
        f"used 60,000 / 10,000), one training seed ({st['seed']}). FC models: Adam lr "
        f"{st['lr']}, {st['epochs']} epochs, batch {st['batch_size']}, loss = mean CE + "
        f"sum_k lambda_k / 2 ||W_k||^2 on [0, 1] pixels; FC100/FC200 hidden layers are ReLU. "
        f"AE400-10: sparse sigmoid autoencoder (UFLDL objective, lambda "
        f"{st['ae_weight_decay']}, beta {st['ae_sparsity_weight']}, rho "
        f"{st['ae_sparsity_target']}), {st['ae_pretrain_epochs']} epochs of reconstruction at "
        f"Adam lr {st['ae_lr']}, then the softmax alone on the frozen code ({st['epochs']} "
        f"epochs). Adversarial examples: box-constrained L-BFGS (c search from "
        f"{st['c_init']}, {st['c_steps']} solves of at most {st['max_iter']} L-BFGS-B "
        f"iterations) towards a seeded random wrong class, for the same {n_att} seeded test "
        f"images on every model. Distortion = sqrt(sum (x' - x)^2 / 784), pixels in [0, 1]. "
        f"Paper values in parentheses (Szegedy et al. 2013 Tables 1 and 2, via FIELD_NOTES).",
        "",
        "**Table 1** (our value (paper)):",
        "",
        "| model | train error | test error | L-BFGS success | mean minimal distortion |",
        "|---|---|---|---|---|",
    ]
    for name in [*table1, *results["half_models"]]:
        m = models[name]
        paper = PAPER_TABLE1.get(name)
        p_train, p_test, p_dist = (
            (f" ({_pct(paper[0], 2)})", f" ({_pct(paper[1], 2)})", f" ({_num(paper[2])})")
            if paper
            else ("", "", "")
        )
        lines.append(
            f"| {name} | {_pct(m['train_error'], 2)}{p_train} | "
            f"{_pct(m['test_error'], 2)}{p_test} | {_pct(m['attack']['success_rate'])} | "
            f"{_num(m['attack']['mean_distortion'])}{p_dist} |"
        )
    lines += [
        "",
        "**Table 2**: error of each column model on the examples made for each row model "
        "(diagonal: the attacked model itself), on Gaussian noise (clipped to [0, 1]) and on "
        "noise of the same L2 size as each row model's perturbations (random direction, "
        "then clipped to [0, 1], which can only shorten it; the realised distortion is shown). "
        "All rows on the same attacked images.",
        "",
        *_table_markdown(results["table2"], PAPER_TABLE2),
        "",
        "**Table 3**: FC100-100-10 trained on two disjoint, class-stratified halves P1 and P2 "
        "of the training set (and on all of it).",
        "",
        *_table_markdown(results["table3"], {}),
    ]
    bounds = results["layer_bounds"]
    if bounds:
        lines += [
            "",
            "**Layer instability** (the style of the paper's Table 5, which is AlexNet's): upper "
            "bounds on each weight layer's Lipschitz constant (L2) from "
            "`snnl.lipschitz.layer_bounds`, each weight layer with the parameter-free layers "
            "after it (ReLU 1, sigmoid 1/4), input to output; their product bounds the network.",
            "",
            "| model | per weight layer, input -> output | product |",
            "|---|---|---|",
        ]
        for name, b in bounds.items():
            per = ", ".join(f"{k} {v:.3g}" for k, v in b["blocks"].items())
            lines.append(f"| {name} | {per} | {b['product']:.4g} |")
    lines += [
        "",
        f"**SNNL\\* per layer** (soft nearest neighbour loss at its optimal temperature, "
        f"{st['probe_size']} seeded test images; lower = classes better separated):",
        "",
        "| model | layers: SNNL* |",
        "|---|---|",
    ]
    for name in [*table1, *results["half_models"]]:
        per = ", ".join(f"{k} {_num(v)}" for k, v in models[name]["snnl"].items())
        lines.append(f"| {name} | {per} |")
    sim = results["similarity"]
    lines += [
        "",
        "**Transfer against representation similarity**: linear CKA between "
        f"{sim['representation']} of two models on the same test images, against the mean "
        "excess transfer error of the pair (error of one on the other's examples minus its "
        "error on the clean images, both directions averaged). "
        f"Spearman correlation over the {len(sim['pairs'])} pairs: "
        f"{_num(sim['spearman'])} (p = {_num(sim['p_value'])}).",
        "",
        "| pair | CKA | excess transfer error |",
        "|---|---|---|",
    ]
    for p in sim["pairs"]:
        lines.append(f"| {p['a']} / {p['b']} | {_num(p['cka'])} | {_pct(p['excess_transfer'])} |")
    lines += ["", "**Units against random directions** (class purity of the top "
              f"{st['top_k']} test images; a dead unit, constant over the test set, is left out):",
              "", "| model, layer | live units | unit purity | random-direction purity |",
              "|---|---|---|---|"]  # fmt: skip
    for name, u in results["units"].items():
        lines.append(
            f"| {name}, {u['layer']} | {u['live_units']} / {u['units']} | "
            f"{np.mean(u['unit_purity']):.3f} +- {np.std(u['unit_purity'], ddof=1):.3f} | "
            f"{np.mean(u['random_purity']):.3f} +- {np.std(u['random_purity'], ddof=1):.3f} |"
        )
    secs = results["seconds"]
    lines += [
        "",
        "Cost (this run; models reused from an earlier run cost nothing to train): "
        + ", ".join(f"{k} {v['wall']:.1f} s wall / {v['cpu']:.1f} s CPU" for k, v in secs.items())
        + ".",
    ]
    return Section(
        title=TITLE,
        markdown="\n".join(lines),
        figures=[
            ("intriguing_examples.png", "Adversarial examples for every Table 1 model"),
            ("intriguing_distortions.png", "Minimal distortion per model, with the paper's means"),
            *unit_figs,
        ],
    )


# ----------------------------------------------------------------------------- claims


def _all_of(verdicts: Sequence[str]) -> Verdict:
    """ "does not hold" if any part does not hold, "holds" if all hold, else "inconclusive"."""
    if "does not hold" in verdicts:
        return "does not hold"
    return "holds" if all(v == "holds" for v in verdicts) else "inconclusive"


def _paired(a: Sequence[float], b: Sequence[float], expect: str) -> tuple[Verdict, str]:
    """:func:`compare_paired`, "inconclusive" when fewer than two pairs were measured."""
    if len(a) < 2:
        return "inconclusive", f"{len(a)} pair(s) measured: no standard error"
    return compare_paired(a, b, expect=expect)


_NEGATE: dict[str, Verdict] = {
    "holds": "does not hold",
    "does not hold": "holds",
    "inconclusive": "inconclusive",
}


def _claim_units(results: dict[str, Any], setting: str) -> Claim:
    verdicts, measured, notes = [], [], []
    for name, u in results["units"].items():
        # "units are purer than random directions" by at least 0.1: the claim is its negation
        if min(len(u["unit_purity"]), len(u["random_purity"])) < 2:
            v, note = "inconclusive", "fewer than two live units"
        else:
            v, note = compare_groups(
                u["unit_purity"], u["random_purity"], expect="greater", min_effect=0.1
            )
        verdicts.append(_NEGATE[v])
        units, rand = u["unit_purity"], u["random_purity"]
        measured.append(
            f"{name} {u['layer']}: units {np.mean(units):.3f} (n={len(units)}) vs random "
            f"{np.mean(rand):.3f} (n={len(rand)})"
        )
        notes.append(f"{name}: {note}")
    return Claim(
        claim="Individual high-level units are no more semantically meaningful than random "
        "directions in their layer.",
        source=f"{SOURCE}, sec. 3",
        setting=setting + "; measure: class purity of the top test images of a unit vs a "
        "random direction; 'more meaningful' = units purer by > 2 SE (Welch, over "
        "units/directions); the claim holds where that is refuted (no effect of size 0.1)",
        measured="; ".join(measured),
        verdict=_all_of(verdicts),
        note="; ".join(notes),
    )


def _claim_transfer(results: dict[str, Any], setting: str) -> Claim:
    names = [*results["table1_models"], *results["half_models"]]
    success = {n: results["models"][n]["attack"]["success_rate"] for n in names}
    exists: Verdict = "holds" if min(success.values()) >= 0.95 else "does not hold"
    adv, same, gauss = [], [], []
    for tab in (results["table2"], results["table3"]):
        sources = [r["source"] for r in tab["rows"] if r["kind"] == "adversarial"]
        g = _row(tab, f"gaussian {min(results['settings']['noise_sigmas']):g}")
        for src in sources:
            for col in tab["columns"]:
                if col == src or (src in results["half_models"] and col not in sources):
                    continue  # own model; Table 3: only the other half
                adv.append(_row(tab, src)["errors"][col])
                same.append(_row(tab, f"noise like {src}")["errors"][col])
                gauss.append(g["errors"][col])
    v_same, n_same = _paired(adv, same, "greater")
    v_gauss, n_gauss = _paired(adv, gauss, "greater")
    sigma = min(results["settings"]["noise_sigmas"])
    return Claim(
        claim="Adversarial examples exist for every model and transfer to models with other "
        "architectures, hyper-parameters and training sets.",
        source=f"{SOURCE}, sec. 4.2 (Tables 1-3)",
        setting=setting + "; holds when every model's L-BFGS success rate is >= 95% and the "
        "other models' error on the examples exceeds (paired over the "
        f"{len(adv)} model pairs of Tables 2 and 3, > 2 SE) both their error under noise of "
        f"the same L2 size and under Gaussian noise sigma {sigma:g}",
        measured=f"success rates {min(success.values()):.0%}-{max(success.values()):.0%}; "
        f"transfer error {np.mean(adv):.3f} vs same-size noise {np.mean(same):.3f} vs "
        f"Gaussian {sigma:g} {np.mean(gauss):.3f} (means over {len(adv)} pairs)",
        verdict=_all_of([exists, v_same, v_gauss]),
        note=f"existence: {exists}; vs same-size noise: {n_same}; vs Gaussian: {n_gauss}",
    )


def _claim_layers(results: dict[str, Any], setting: str) -> Claim:
    upper, lower, per_model = [], [], []
    for name, b in results["layer_bounds"].items():
        blocks = list(b["blocks"].values())
        half = len(blocks) // 2
        if half == 0:
            continue  # one weight layer: nothing to compare
        lo = float(np.mean(np.log10(blocks[:half])))
        hi = float(np.mean(np.log10(blocks[-half:])))
        lower.append(lo)
        upper.append(hi)
        per_model.append(f"{name} {10**lo:.3g} -> {10**hi:.3g}")
    if len(upper) < 2:
        verdict: Verdict = "inconclusive"
        note = "fewer than two models with two or more weight layers have bounds"
    else:
        verdict, note = _paired(upper, lower, "greater")
    return Claim(
        claim="Higher layers are less stable: their upper Lipschitz bounds are larger.",
        source=f"{SOURCE}, sec. 4.3 (Table 5)",
        setting=setting + "; per model with >= 2 weight layers: mean log10 bound of the upper "
        "half of its weight layers (each with its activation) vs the lower half (the middle "
        "layer of an odd count left out), paired over models, > 2 SE",
        measured="geometric-mean bound, lower half -> upper half: " + "; ".join(per_model),
        verdict=verdict,
        note=note + " (difference in log10)",
    )


def _claim_autoencoder(results: dict[str, Any], setting: str) -> Claim:
    d = {n: results["models"][n]["attack"]["distortions"] for n in results["table1_models"]}
    ae, others = "AE400-10", ("FC100-100-10", "FC200-200-10")
    both = [i for i in range(len(d[ae])) if all(d[m][i] is not None for m in (ae, *others))]
    a = [d[ae][i] for i in both]
    b = [float(np.mean([d[m][i] for m in others])) for i in both]
    v_dist, n_dist = _paired(a, b, "greater")
    t2 = results["table2"]
    col_ae, col_min = [], []
    for r in results["table1_models"]:
        if r == ae:
            continue
        errs = _row(t2, r)["errors"]
        col_ae.append(errs[ae])
        col_min.append(min(v for c, v in errs.items() if c not in (ae, r)))
    v_col, n_col = _paired(col_ae, col_min, "less")
    return Claim(
        claim="The autoencoder-based model is more resilient: it needs larger perturbations, "
        "and the other models' examples fool it least.",
        source=f"{SOURCE}, sec. 4.2 (Tables 1, 2)",
        setting=setting + "; (a) per image solved on all three, AE400-10's minimal distortion "
        "vs the mean of FC100-100-10's and FC200-200-10's (the models of comparable "
        "error), paired, > 2 SE; (b) per row of Table 2, the AE400-10 column vs the lowest "
        "other column (the row's own model left out), paired, > 2 SE; both must hold",
        measured=f"(a) distortion {_mean(a, 4)} vs {_mean(b, 4)} ({len(a)} images); "
        f"(b) AE column {np.mean(col_ae):.3f} vs lowest other {np.mean(col_min):.3f} "
        f"({len(col_ae)} rows)",
        verdict=_all_of([v_dist, v_col]),
        note=f"(a) {n_dist}; (b) {n_col}",
    )


def claims(results: dict[str, Any]) -> list[Claim]:
    """The paper's four MNIST claims, each with the rule its verdict follows."""
    setting = (
        f"{results['dataset']}, {results['train_size']}/{results['test_size']}, one training "
        f"seed, {len(results['attack_set']['indices'])} attacked test images"
    )
    return [
        _claim_units(results, setting),
        _claim_transfer(results, setting),
        _claim_layers(results, setting),
        _claim_autoencoder(results, setting),
    ]
