"""A small GAN and the entanglement of real and generated data over its training.

Frosst, Papernot & Hinton (2019) measure the SNNL of real and generated data
(labels: real / generated) during GAN training and report that it rises: the
generator's samples become harder to tell from real data by their neighbours.
:func:`train_gan` trains a GAN (non-saturating loss, Adam) and measures, after
every epoch, on FRESH samples of the current generator (seeded per epoch; never
samples stored earlier) and held-out real images:

- SNNL*(real, generated) (:func:`snnl.temperature.entanglement_between` at the optimal
  temperature, :func:`entanglement_star`) in input space and in every hidden
  layer of the discriminator and of a separately trained classifier;
- mode coverage: the classifier's histogram of generated samples and the classes
  it finds missing (:func:`mode_coverage`: share below ``MISSING_SHARE / C``);
- the Frechet distance between real and generated data in the classifier's last
  hidden layer (:func:`frechet_distance`; exact, float64, no Inception network).

Optionally the generator also maximises the entanglement of real and generated
data in the discriminator's or the classifier's hidden layers (``snnl_alpha``):

    loss_G = softplus(-D(G(z))).mean() - snnl_alpha * sum_l SNNL*(h_l(real), h_l(G(z)))

with each layer's T* found per batch (:class:`snnl.regularizers.EntanglementRegularizer`,
``temperature_mode="optimal"``) and held fixed for the gradient.

A run lives in one folder, driven by the loop of :mod:`snnl.runs` (config.json,
metrics.jsonl, checkpoint.pt, results.json, .snnl.lock); the checkpoint holds both
networks, both optimisers and the SNNL term's temperatures after the last finished
epoch. ``resume=True`` with a larger ``epochs`` extends a finished run.

Determinism: the networks are initialised from ``seed``; the data order, the
training noise and the evaluation noise of epoch e come from generators seeded
with (seed, e), so a run killed at any step and resumed gives byte-identical
metrics (same machine, CPU).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from snnl import _io
from snnl._checks import check_choice, check_int, check_positive, check_real, check_tensor
from snnl.data import DataSplits
from snnl.models import GAN_ARCHITECTURES, build_gan
from snnl.regularizers import EntanglementRegularizer
from snnl.runs import (
    CHECKPOINT,
    RESULTS,
    DamagedRunError,
    EpochTrainer,
    NonFiniteLoss,
    RunMismatchError,
    epoch_batches,
    load_checkpoint,
    read_json,
    run_epochs,
)
from snnl.taps import LayerTap, capture, eval_mode
from snnl.temperature import snnl_star
from snnl.train import load_config_dataset, load_run

__all__ = [
    "GANConfig",
    "SNNL_TARGETS",
    "SNNL_TEMPERATURE_MODES",
    "MISSING_SHARE",
    "train_gan",
    "load_gan_run",
    "generate",
    "held_out_real",
    "noise_seed",
    "state_digest",
    "entanglement_star",
    "evaluate_generator",
    "mode_coverage",
    "frechet_distance",
    "frechet_distance_gaussians",
]

#: Networks whose hidden layers the generator's SNNL term can entangle.
SNNL_TARGETS: tuple[str, ...] = ("discriminator", "classifier")
#: How the SNNL term's temperatures are chosen (modes of EntanglementRegularizer).
SNNL_TEMPERATURE_MODES: tuple[str, ...] = ("learned", "optimal")
#: A class is missing from the generated samples when its share is below MISSING_SHARE / C
#: (a quarter of its share under uniform coverage).
MISSING_SHARE = 0.25
#: Decimals kept of the sample images stored per epoch (for the report's grids).
SAMPLE_DECIMALS = 2


@dataclass
class GANConfig:
    """Everything that determines a GAN run (saved as config.json).

    Example:
        >>> GANConfig(snnl_alpha=1.0).snnl_target
        'discriminator'
        >>> GANConfig(arch="vae")
        Traceback (most recent call last):
        ...
        ValueError: unknown arch 'vae'; expected one of: mlp, dcgan
    """

    dataset: str = "mnist5k"
    arch: str = "mlp"  # "mlp" or "dcgan" (image sides multiples of 4)
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3  # Adam, both networks (2e-4 learned too little in 5 epochs of mnist5k)
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])  # Radford et al. 2016
    latent_dim: int = 64
    generator_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"widths": [256]}
    discriminator_kwargs: dict[str, Any] = field(default_factory=dict)
    snnl_alpha: float = 0.0  # > 0: the generator also maximises SNNL*(real, generated)
    snnl_target: str = "discriminator"  # whose hidden layers: "discriminator" | "classifier"
    # T of the SNNL term: "learned" (Adam on log T towards each batch's T*, starting at
    # the initial evaluation's T*; cheap) or "optimal" (exact T* of every batch)
    snnl_temperature_mode: str = "learned"
    classifier: str | None = None  # a finished `snnl train` run folder (the measuring model)
    eval_samples: int = 1000  # generated (and held-out real) samples for coverage and FD
    entanglement_samples: int = 300  # of those, per set, for SNNL*(real, generated)
    grid_samples: int = 8  # images kept per epoch (fixed noise) for sample grids
    seed: int = 0  # initialisation, data order, noise
    split_seed: int = 0  # the train/test split
    data_dir: str | None = None
    limit_train: int | None = None
    limit_test: int | None = None

    def __post_init__(self) -> None:
        check_choice("arch", self.arch, GAN_ARCHITECTURES)
        check_int("epochs", self.epochs, low=1)
        check_int("batch_size", self.batch_size, low=2)
        check_positive("lr", self.lr)
        betas = [
            check_real("betas", b, low=0.0, high=1.0, high_inclusive=False) for b in self.betas
        ]
        if len(betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = betas
        check_int("latent_dim", self.latent_dim, low=1)
        check_real("snnl_alpha", self.snnl_alpha)
        check_choice("snnl_target", self.snnl_target, SNNL_TARGETS)
        check_choice("snnl_temperature_mode", self.snnl_temperature_mode, SNNL_TEMPERATURE_MODES)
        if self.snnl_alpha != 0 and self.snnl_target == "classifier" and self.classifier is None:
            raise ValueError(
                "snnl_target 'classifier' needs a classifier run (classifier=RUN_DIR, "
                "--classifier on the command line)"
            )
        check_int("eval_samples", self.eval_samples, low=2)
        check_int("entanglement_samples", self.entanglement_samples, low=2)
        if self.entanglement_samples > self.eval_samples:
            raise ValueError(
                f"entanglement_samples ({self.entanglement_samples}) must not exceed "
                f"eval_samples ({self.eval_samples})"
            )
        check_int("grid_samples", self.grid_samples, low=0)
        check_int("seed", self.seed)
        check_int("split_seed", self.split_seed)
        if self.classifier is not None:
            self.classifier = str(self.classifier)
        # JSON form (tuples -> lists), so a config equals its saved config.json
        self.generator_kwargs = json.loads(json.dumps(self.generator_kwargs))
        self.discriminator_kwargs = json.loads(json.dumps(self.discriminator_kwargs))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GANConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown GANConfig fields: {', '.join(unknown)}")
        return cls(**data)


# ----------------------------------------------------------------------------- measures


def noise_seed(seed: int, stream: str, epoch: int) -> int:
    """The seed of one noise stream ("train", "eval", "grid", "real") of one epoch.

    A hash of (seed, stream, epoch), so streams never share draws.

    >>> noise_seed(0, "eval", 1) == noise_seed(0, "eval", 1) != noise_seed(0, "eval", 2)
    True
    """
    digest = hashlib.sha256(f"snnl-gan:{seed}:{stream}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generate(generator: nn.Module, num_samples: int, seed: int, *, batch_size: int = 500) -> Tensor:
    """``num_samples`` fresh samples of ``generator`` (eval mode, no gradient).

    The noise is N(0, I) of shape (num_samples, generator.latent_dim) drawn on the
    CPU from a generator seeded with ``seed``; the samples are on the CPU.

    >>> from snnl.models import MLPGenerator
    >>> g = MLPGenerator(4, (1, 2, 2), widths=(8,))
    >>> bool(torch.equal(generate(g, 5, seed=1), generate(g, 5, seed=1)))
    True
    """
    check_int("num_samples", num_samples, low=1)
    z = torch.randn(
        num_samples, generator.latent_dim, generator=torch.Generator().manual_seed(seed)
    )
    device = next(generator.parameters()).device
    with eval_mode(generator), torch.no_grad():
        return torch.cat(
            [
                generator(z[i : i + batch_size].to(device)).cpu()
                for i in range(0, num_samples, batch_size)
            ]
        )


def _membership(na: int, nb: int, device: torch.device) -> Tensor:
    return torch.cat([torch.zeros(na, dtype=torch.int64), torch.ones(nb, dtype=torch.int64)]).to(
        device
    )


def entanglement_star(real: Tensor, generated: Tensor) -> tuple[float, float]:
    """SNNL* of real and generated points labelled by membership, and log T*.

    SNNL*(A, B) = min_T SNNL(A u B, membership, T) (:func:`snnl.temperature.snnl_star`:
    Newton steps in log T started from a grid over the data's own distance range, so
    any feature scale works). Never warm-started: the curve in T can have a local
    minimum above its large-T limit, and a warm start can get stuck there.

    Bounds: identical sets give the indistinguishable value
    log((2n - 1) / (n - 1)) for n points each (the limit T -> infinity, where
    every pair weighs the same); sets far apart give about 0.

    Args:
        real: (Na, ...) float tensor; generated: (Nb, ...) with the same trailing shape.

    Returns:
        (SNNL*, log T*) as floats.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> real = torch.randn(40, 3, generator=g)
        >>> far, _ = entanglement_star(real, real + 100.0)
        >>> same, _ = entanglement_star(real, real.clone())
        >>> round(far, 6), round(same, 4), round(math.log(79 / 39), 4)
        (0.0, 0.7059, 0.7059)
    """
    check_tensor("real", real, min_dim=2, floating=True)
    check_tensor("generated", generated, min_dim=2, floating=True)
    if real.shape[0] < 2 or generated.shape[0] < 2:
        raise ValueError(
            f"entanglement_star needs at least 2 points per set, got {real.shape[0]} real and "
            f"{generated.shape[0]} generated"
        )
    a = real.detach().reshape(real.shape[0], -1)
    b = generated.detach().reshape(generated.shape[0], -1).to(a.device)
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"real and generated must have the same shape per point, got {tuple(real.shape)} "
            f"and {tuple(generated.shape)}"
        )
    labels = _membership(a.shape[0], b.shape[0], a.device)
    star = snnl_star(torch.cat([a, b]), labels)
    return float(star.value), star.log_temperature


def mode_coverage(predictions: Tensor, num_classes: int) -> dict[str, Any]:
    """Histogram of the classes a classifier assigns to generated samples; missing classes.

    A class is *missing* when its share of the samples is below ``MISSING_SHARE / C``
    (a quarter of the share every class has under uniform coverage).

    Args:
        predictions: (N,) predicted class indices; num_classes: C.

    Returns:
        ``{"counts": [C ints], "share": [C floats], "missing": [class indices],
        "num_missing": int, "threshold": MISSING_SHARE / C}``.

    Example:
        >>> cov = mode_coverage(torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 2]), 4)
        >>> cov["counts"], cov["missing"]
        ([2, 3, 5, 0], [3])
    """
    c = check_int("num_classes", num_classes, low=1)
    check_tensor("predictions", predictions, min_dim=1)
    if predictions.dim() != 1 or predictions.is_floating_point() or predictions.numel() == 0:
        raise ValueError(
            f"predictions must be a non-empty (N,) integer tensor, got shape "
            f"{tuple(predictions.shape)} and dtype {predictions.dtype}"
        )
    p = predictions.long().cpu()
    if int(p.min()) < 0 or int(p.max()) >= c:
        raise ValueError(f"predictions must lie in [0, {c}), got [{int(p.min())}, {int(p.max())}]")
    counts = torch.bincount(p, minlength=c).tolist()
    n = int(p.numel())
    threshold = MISSING_SHARE / c
    missing = [k for k, v in enumerate(counts) if v / n < threshold]
    return {
        "counts": counts,
        "share": [v / n for v in counts],
        "missing": missing,
        "num_missing": len(missing),
        "threshold": threshold,
    }


def frechet_distance_gaussians(
    mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray
) -> float:
    """Frechet (2-Wasserstein) distance between N(mean_a, cov_a) and N(mean_b, cov_b), squared.

    FD = |m_a - m_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^{1/2} S_b S_a^{1/2})^{1/2})

    in float64 by eigen-decomposition: S_a^{1/2} S_b S_a^{1/2} is symmetric positive
    semi-definite and similar to S_a S_b, so its square root's trace is the
    tr((S_a S_b)^{1/2}) of the usual formula, without a general matrix square root.
    Eigenvalues below 0 (rounding) count as 0.

    Example:
        >>> m = np.zeros(2)
        >>> # |m_a - m_b|^2 = 2, and each of the 2 axes adds (sqrt(1) - sqrt(4))^2 = 1
        >>> round(frechet_distance_gaussians(m, np.eye(2), m + 1, 4 * np.eye(2)), 10)
        4.0
    """
    ma, mb = np.asarray(mean_a, np.float64).ravel(), np.asarray(mean_b, np.float64).ravel()
    sa, sb = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    d = ma.shape[0]
    for name, s in (("cov_a", sa), ("cov_b", sb)):
        if s.shape != (d, d):
            raise ValueError(f"{name} must have shape ({d}, {d}) to match the means, got {s.shape}")
        if not np.isfinite(s).all():
            raise ValueError(f"{name} contains NaN or Inf")
    if mb.shape != ma.shape:
        raise ValueError(
            f"mean_a and mean_b must have the same size, got {ma.shape} and {mb.shape}"
        )
    w, v = np.linalg.eigh((sa + sa.T) / 2)
    root_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    middle = root_a @ sb @ root_a
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_root = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = ma - mb
    return float(diff @ diff + np.trace(sa) + np.trace(sb) - 2.0 * trace_root)


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Frechet distance between Gaussians fitted to two sets of features (float64).

    Each set's mean and unbiased covariance (divisor N - 1, as ``np.cov``) go to
    :func:`frechet_distance_gaussians`. On a classifier's features this is the FID
    recipe with that classifier in place of the Inception network; it is biased
    upwards for small N, so compare values computed from equal sample sizes.

    Args:
        a: (Na, D) or (Na, ...) features (flattened); b: (Nb, D). Na, Nb >= 2.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(500, 3, generator=g, dtype=torch.float64)
        >>> frechet_distance(x, x) < 1e-9, round(frechet_distance(x, x + 2.0), 6)  # |shift|^2 = 12
        (True, 12.0)
    """
    check_tensor("a", a, min_dim=2, floating=True)
    check_tensor("b", b, min_dim=2, floating=True)
    xa = a.detach().reshape(a.shape[0], -1).double().cpu().numpy()
    xb = b.detach().reshape(b.shape[0], -1).double().cpu().numpy()
    if xa.shape[0] < 2 or xb.shape[0] < 2:
        raise ValueError(f"need at least 2 points per set, got {xa.shape[0]} and {xb.shape[0]}")
    if xa.shape[1] != xb.shape[1]:
        raise ValueError(f"a and b must have the same feature size, got {xa.shape} and {xb.shape}")
    return frechet_distance_gaussians(
        xa.mean(0), np.cov(xa, rowvar=False).reshape(xa.shape[1], -1),
        xb.mean(0), np.cov(xb, rowvar=False).reshape(xb.shape[1], -1),
    )  # fmt: skip


def _per_layer_star(
    real: dict[str, Tensor], fake: dict[str, Tensor]
) -> tuple[dict[str, float], dict[str, float]]:
    values, log_t = {}, {}
    for name in real:
        values[name], log_t[name] = entanglement_star(real[name], fake[name])
    return values, log_t


def evaluate_generator(
    generator: nn.Module,
    discriminator: nn.Module,
    real: Tensor,
    *,
    classifier: nn.Module | None = None,
    num_samples: int,
    entanglement_samples: int,
    seed: int,
) -> dict[str, Any]:
    """Measure a generator on ``num_samples`` fresh samples drawn with noise seed ``seed``.

    Args:
        generator, discriminator: the GAN's networks (hidden layers tapped by name).
        real: (M, ...) held-out real images; the first ``num_samples`` are used.
        num_samples: generated samples (coverage, FD).
        classifier: a trained classifier (hidden layers, logits) or None.
        entanglement_samples: points per set for SNNL*(real, generated) (the first ones;
            fewer when there are fewer real images).

    Returns:
        ``{"entanglement": {"input": v, "discriminator": {layer: v}, "classifier":
        {layer: v}}, "log_temperature": (same shape), "entanglement_points": points per
        set, "discriminator_real",
        "discriminator_generated"`` (mean D probability of "real" on each set),
        ``"coverage"`` (:func:`mode_coverage` or None), ``"frechet_distance"`` (in the
        classifier's last hidden layer, or None)``}``.

    Example:
        >>> from snnl.models import build_gan
        >>> _ = torch.manual_seed(0)
        >>> gen, disc = build_gan("mlp", (1, 4, 4), latent_dim=4)
        >>> real = torch.rand(20, 1, 4, 4)
        >>> res = evaluate_generator(gen, disc, real, num_samples=20, entanglement_samples=10,
        ...                          seed=0)
        >>> sorted(res["entanglement"]["discriminator"]), res["entanglement_points"]
        (['act1', 'act2'], 10)
    """
    fake = generate(generator, num_samples, seed)
    real = real[:num_samples]
    k = min(entanglement_samples, real.shape[0])  # as many real as generated points
    ent: dict[str, Any] = {}
    log_t: dict[str, Any] = {}
    ent["input"], log_t["input"] = entanglement_star(real[:k], fake[:k])
    d_layers = list(discriminator.hidden_layer_names)
    d_real = capture(discriminator, real, [*d_layers, "logits"])
    d_fake = capture(discriminator, fake, [*d_layers, "logits"])
    ent["discriminator"], log_t["discriminator"] = _per_layer_star(
        {n: d_real[n][:k] for n in d_layers},
        {n: d_fake[n][:k] for n in d_layers},
    )
    out: dict[str, Any] = {
        "entanglement": ent,
        "log_temperature": log_t,
        "entanglement_points": k,
        "discriminator_real": float(torch.sigmoid(d_real["logits"]).mean()),
        "discriminator_generated": float(torch.sigmoid(d_fake["logits"]).mean()),
        "coverage": None,
        "frechet_distance": None,
    }
    ent["classifier"], log_t["classifier"] = {}, {}
    if classifier is not None:
        c_layers = list(classifier.hidden_layer_names)
        c_real = capture(classifier, real, [*c_layers, "logits"])
        c_fake = capture(classifier, fake, [*c_layers, "logits"])
        ent["classifier"], log_t["classifier"] = _per_layer_star(
            {n: c_real[n][:k] for n in c_layers},
            {n: c_fake[n][:k] for n in c_layers},
        )
        out["coverage"] = mode_coverage(c_fake["logits"].argmax(1), c_fake["logits"].shape[1])
        out["frechet_distance"] = frechet_distance(c_real[c_layers[-1]], c_fake[c_layers[-1]])
    return out


# ----------------------------------------------------------------------------- run folder


def state_digest(model: nn.Module) -> str:
    """sha256 of a model's state dict (names, dtypes, shapes, values): a classifier's identity.

    >>> a, b = nn.Linear(2, 1), nn.Linear(2, 1)
    >>> _ = b.load_state_dict(a.state_dict())
    >>> state_digest(a) == state_digest(b)
    True
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def _load_classifier(config: GANConfig, dataset: DataSplits) -> nn.Module | None:
    """The measuring classifier (eval mode, frozen), or None without ``config.classifier``."""
    if config.classifier is None:
        return None
    path = Path(config.classifier)
    if not (path / RESULTS).exists():
        raise FileNotFoundError(
            f"classifier {path} is not a finished training run ({RESULTS} not found); train "
            "one with `snnl train ... --out RUN_DIR`"
        )
    saved = read_json(path / RESULTS, "the classifier run's results")
    trained_on = saved.get("config", {}).get("dataset") if isinstance(saved, dict) else None
    # the run's own data when it names another set (its model is built for that set)
    model, _ = load_run(path, dataset=dataset if trained_on == dataset.name else None)
    shape = tuple(getattr(model, "input_shape", dataset.input_shape))
    if shape != tuple(dataset.input_shape):
        raise ValueError(
            f"classifier {path} takes inputs shaped {shape}, the GAN's data are "
            f"{tuple(dataset.input_shape)}"
        )
    if not getattr(model, "hidden_layer_names", None):
        raise ValueError(f"classifier {path} has no hidden_layer_names to measure in")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


#: What a GAN checkpoint holds besides the loop's history, seconds and initial measures.
CHECKPOINT_KEYS = frozenset(
    {"generator", "discriminator", "optimizer_g", "optimizer_d", "regularizer",
     "classifier_sha256"}
)  # fmt: skip


def build_gan_models(
    config: GANConfig, image_shape: tuple[int, ...]
) -> tuple[nn.Module, nn.Module]:
    """The run's (generator, discriminator), initialised from its seed."""
    torch.manual_seed(config.seed)
    return build_gan(
        config.arch,
        image_shape,
        latent_dim=config.latent_dim,
        generator_kwargs=config.generator_kwargs,
        discriminator_kwargs=config.discriminator_kwargs,
    )


def held_out_real(dataset: DataSplits, n: int) -> Tensor:
    """The held-out real images every epoch is measured against: a fixed subset of the
    test split, the first ``n`` of ``torch.randperm(len(test))`` drawn from a generator
    seeded with ``noise_seed(0, "real", 0)`` (the same for every GAN seed).

    >>> from snnl.data import load_dataset
    >>> held_out_real(load_dataset("digits"), 5).shape
    torch.Size([5, 1, 8, 8])
    """
    g = torch.Generator().manual_seed(noise_seed(0, "real", 0))
    return dataset.x_test[torch.randperm(len(dataset.y_test), generator=g)[:n]]


def _grid(generator: nn.Module, config: GANConfig) -> list[Any]:
    if config.grid_samples == 0:
        return []
    x = generate(generator, config.grid_samples, noise_seed(config.seed, "grid", 0))
    return np.round(x.double().numpy(), SAMPLE_DECIMALS).tolist()


# ----------------------------------------------------------------------------- training


def _train_epoch(
    config: GANConfig,
    nets: dict[str, Any],
    dataset: DataSplits,
    epoch: int,
    on_step: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    gen, disc = nets["generator"], nets["discriminator"]
    opt_g, opt_d, reg = nets["optimizer_g"], nets["optimizer_d"], nets["regularizer"]
    target = disc if config.snnl_target == "discriminator" else nets["classifier"]
    noise = torch.Generator().manual_seed(noise_seed(config.seed, "train", epoch))
    batches = epoch_batches(len(dataset.y_train), config.batch_size, config.seed, epoch)
    sums = {"d_loss": 0.0, "g_loss": 0.0, "g_adversarial": 0.0, "d_real": 0.0, "d_fake": 0.0}
    term_sums: dict[str, float] = {}
    gen.train()
    disc.train()
    for step, idx in enumerate(batches, start=1):
        real = dataset.x_train[idx]
        b = real.shape[0]
        # discriminator: softplus(-D(x)) + softplus(D(G(z)))
        z = torch.randn(b, config.latent_dim, generator=noise)
        with torch.no_grad():
            fake = gen(z)
        disc.requires_grad_(True)
        logits_real, logits_fake = disc(real), disc(fake)
        d_loss = F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        # generator: softplus(-D(G(z))) (non-saturating) - alpha * sum_l SNNL*
        disc.requires_grad_(False)
        z = torch.randn(b, config.latent_dim, generator=noise)
        fake = gen(z)
        term = None
        if reg is not None and target is disc:
            with LayerTap(disc, reg.layers) as tap:
                logits = disc(torch.cat([real, fake]))
            adversarial = F.softplus(-logits[b:]).mean()
            term, per_layer = reg.penalty(tap.outputs, _membership(b, b, real.device), update=True)
        else:
            adversarial = F.softplus(-disc(fake)).mean()
            if reg is not None:
                with LayerTap(target, reg.layers) as tap:
                    target(torch.cat([real, fake]))
                term, per_layer = reg.penalty(
                    tap.outputs, _membership(b, b, real.device), update=True
                )
        g_loss = adversarial if term is None else adversarial - config.snnl_alpha * term
        values = (float(d_loss.detach()), float(g_loss.detach()))
        if not all(math.isfinite(v) for v in values):
            raise NonFiniteLoss(
                f"non-finite loss (discriminator {values[0]}, generator {values[1]}) at epoch "
                f"{epoch + 1}, step {step}"
            )
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        sums["d_loss"] += values[0]
        sums["g_loss"] += values[1]
        sums["g_adversarial"] += float(adversarial.detach())
        sums["d_real"] += float(torch.sigmoid(logits_real.detach()).mean())
        sums["d_fake"] += float(torch.sigmoid(logits_fake.detach()).mean())
        if term is not None:
            for layer, v in per_layer.items():
                term_sums[layer] = term_sums.get(layer, 0.0) + float(v)
        if on_step is not None:
            on_step(epoch, step)
    disc.requires_grad_(True)
    steps = len(batches)
    record: dict[str, Any] = {k: v / steps for k, v in sums.items()}
    record["snnl_term"] = {k: v / steps for k, v in term_sums.items()}
    return record


def _evaluate(config: GANConfig, nets: dict[str, Any], real: Tensor, epoch: int) -> dict[str, Any]:
    res = evaluate_generator(
        nets["generator"],
        nets["discriminator"],
        real,
        classifier=nets["classifier"],
        num_samples=config.eval_samples,
        entanglement_samples=config.entanglement_samples,
        seed=noise_seed(config.seed, "eval", epoch),
    )
    res["samples"] = _grid(nets["generator"], config)
    return res


def train_gan(
    config: GANConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    dataset: DataSplits | None = None,
    on_step: Callable[[int, int], None] | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train the GAN of ``config`` into ``out_dir``, measuring it after every epoch.

    Args:
        config: the run's settings.
        out_dir: the run folder (created; locked while training).
        resume: continue from the last finished epoch's checkpoint; a finished run
            whose config asks for more epochs is extended (fewer are refused).
        force: discard whatever the folder holds and start over.
        dataset: an already loaded dataset (else the one ``config`` names).
        on_step: called as ``on_step(epoch, step)`` after every generator step.
        progress: print one line per epoch to stderr (default: when it is a terminal).

    Returns:
        The content of results.json: config, ``initial`` (the untrained generator's
        measures), per-epoch ``history`` (losses and :func:`evaluate_generator`'s
        measures, plus ``samples``: ``grid_samples`` images of fixed noise),
        ``health`` and timing.

    Raises:
        snnl.runs.RunExistsError, RunMismatchError, DamagedRunError,
        snnl._io.RunLockedError, FileNotFoundError (``resume`` of a missing folder),
        ValueError.

    Example:
        >>> import tempfile
        >>> config = GANConfig(dataset="digits", epochs=1, limit_train=64, limit_test=40,
        ...                    latent_dim=4, generator_kwargs={"widths": [16]},
        ...                    discriminator_kwargs={"widths": [16]}, eval_samples=20,
        ...                    entanglement_samples=10)
        >>> res = train_gan(config, tempfile.mkdtemp() + "/run")
        >>> [r["epoch"] for r in res["history"]], sorted(res["history"][0]["entanglement"])
        ([1], ['classifier', 'discriminator', 'input'])
        >>> 0 <= res["history"][0]["entanglement"]["input"] <= math.log(19 / 9)
        True
    """
    if not isinstance(config, GANConfig):
        raise TypeError(f"config must be a GANConfig, got {type(config).__name__}")
    out = Path(out_dir)
    return run_epochs(
        config,
        out,
        lambda: _GANTrainer(config, out, dataset, on_step),
        resume=resume,
        force=force,
        progress=progress,
    )


def _snnl_term(
    config: GANConfig, nets: dict[str, Any], initial: dict[str, Any]
) -> EntanglementRegularizer:
    """The generator's SNNL term on the target's hidden layers; T starts at the initial T*."""
    target = nets[config.snnl_target]
    start = {
        name: math.exp(log_t)
        for name, log_t in initial["log_temperature"][config.snnl_target].items()
    }
    return EntanglementRegularizer(
        target,
        list(start),
        alpha=config.snnl_alpha,
        temperature=start,
        temperature_mode=config.snnl_temperature_mode,
    )


class _GANTrainer(EpochTrainer):
    """Both networks, their optimisers, the SNNL term and the epoch step of a GANConfig."""

    checkpoint_keys = CHECKPOINT_KEYS
    kind = "GAN checkpoint"

    def __init__(
        self,
        config: GANConfig,
        out: Path,
        dataset: DataSplits | None,
        on_step: Callable[[int, int], None] | None,
    ) -> None:
        self.config, self.out, self.on_step = config, out, on_step
        self.dataset = dataset if dataset is not None else load_config_dataset(config)
        classifier = _load_classifier(config, self.dataset)
        self.digest = state_digest(classifier) if classifier is not None else ""
        gen, disc = build_gan_models(config, tuple(self.dataset.input_shape))
        betas = (config.betas[0], config.betas[1])
        self.nets: dict[str, Any] = {
            "generator": gen,
            "discriminator": disc,
            "classifier": classifier,
            "optimizer_g": torch.optim.Adam(gen.parameters(), lr=config.lr, betas=betas),
            "optimizer_d": torch.optim.Adam(disc.parameters(), lr=config.lr, betas=betas),
            "regularizer": None,
        }
        self.real = held_out_real(self.dataset, config.eval_samples)

    def begin(self, initial: dict[str, Any] | None) -> dict[str, Any]:
        if initial is None:
            initial = _io.json_safe(_evaluate(self.config, self.nets, self.real, -1))
        if self.config.snnl_alpha != 0:
            self.nets["regularizer"] = _snnl_term(self.config, self.nets, initial)
        return initial

    def state_dict(self) -> dict[str, Any]:
        nets, reg = self.nets, self.nets["regularizer"]
        return {
            "generator": nets["generator"].state_dict(),
            "discriminator": nets["discriminator"].state_dict(),
            "optimizer_g": nets["optimizer_g"].state_dict(),
            "optimizer_d": nets["optimizer_d"].state_dict(),
            "regularizer": {} if reg is None else reg.state_dict(),
            "classifier_sha256": self.digest,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["classifier_sha256"] != self.digest:
            raise RunMismatchError(
                f"cannot resume {self.out}: the classifier run {self.config.classifier} "
                "changed since this run started (its weights differ); use --force to start over"
            )
        nets = self.nets
        nets["generator"].load_state_dict(state["generator"])
        nets["discriminator"].load_state_dict(state["discriminator"])
        nets["optimizer_g"].load_state_dict(state["optimizer_g"])
        nets["optimizer_d"].load_state_dict(state["optimizer_d"])
        if nets["regularizer"] is not None:
            nets["regularizer"].load_state_dict(state["regularizer"])

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # SNNL's left-out notes: none here
            return _train_epoch(self.config, self.nets, self.dataset, epoch, self.on_step)

    def evaluate(self, epoch: int) -> dict[str, Any]:
        return _evaluate(self.config, self.nets, self.real, epoch)

    def results(
        self, history: list[dict[str, Any]], initial: dict[str, Any], health: dict[str, Any]
    ) -> dict[str, Any]:
        final = history[-1] if history else None
        ds, classifier = self.dataset, self.nets["classifier"]
        return {
            "dataset": {
                "name": ds.name,
                "train": len(ds.y_train),
                "test": len(ds.y_test),
                "classes": ds.num_classes,
                "input_shape": list(ds.input_shape),
            },
            "layers": {
                "discriminator": list(self.nets["discriminator"].hidden_layer_names),
                "classifier": [] if classifier is None else list(classifier.hidden_layer_names),
            },
            "classifier": {"path": self.config.classifier, "sha256": self.digest or None},
            "health": health,
            "initial": initial,
            "final": {
                "epochs_completed": len(history),
                "entanglement": final["entanglement"] if final else None,
                "coverage": final["coverage"] if final else None,
                "frechet_distance": final["frechet_distance"] if final else None,
            },
        }

    def epoch_line(self, record: dict[str, Any]) -> str:
        ent = record["entanglement"]
        return (
            f"epoch {record['epoch']}: D {record['d_loss']:.3f} G {record['g_loss']:.3f} "
            f"SNNL*(real, generated) input {ent['input']:.4f}"
            + (f" FD {record['frechet_distance']:.2f}" if record["frechet_distance"] else "")
        )


def load_gan_run(out_dir: str | Path) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """(generator, discriminator, results) of a finished GAN run, networks in eval mode.

    Example:
        >>> import tempfile
        >>> out = tempfile.mkdtemp() + "/run"
        >>> _ = train_gan(GANConfig(dataset="digits", epochs=1, limit_train=64, limit_test=40,
        ...                         eval_samples=20, entanglement_samples=10), out)
        >>> gen, disc, results = load_gan_run(out)
        >>> generate(gen, 3, seed=0).shape
        torch.Size([3, 1, 8, 8])
    """
    out = Path(out_dir)
    if not (out / RESULTS).exists():
        raise FileNotFoundError(f"{out / RESULTS} not found: {out} is not a finished GAN run")
    results = read_json(out / RESULTS, "the run's results")
    try:
        config = GANConfig.from_dict(results["config"])
        shape = tuple(results["dataset"]["input_shape"])
    except (KeyError, TypeError, ValueError) as err:
        raise DamagedRunError(f"{out / RESULTS} does not hold a valid GAN config ({err})") from None
    gen, disc = build_gan_models(config, shape)
    state = load_checkpoint(out / CHECKPOINT, CHECKPOINT_KEYS, "GAN checkpoint")
    try:
        gen.load_state_dict(state["generator"])
        disc.load_state_dict(state["discriminator"])
    except RuntimeError:
        raise DamagedRunError(f"{out / CHECKPOINT} does not match the run's networks") from None
    return gen.eval(), disc.eval(), results
