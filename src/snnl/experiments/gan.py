"""Experiment "gan": the entanglement of real and generated data over GAN training.

Frosst, Papernot & Hinton (2019) report that the SNNL between real and generated
data (labels: real / generated) rises while a GAN trains. Per seed, two GANs are
trained from the same initialisation, data order and noise (:func:`snnl.gan.train_gan`):

- ``plain``: the non-saturating GAN loss;
- ``snnl``: the generator also maximises SNNL*(real, generated) in the
  discriminator's hidden layers (``loss_G -= alpha * sum_l SNNL*``).

After every epoch each is measured on fresh samples of its current generator
against held-out real images: SNNL* in input space and in every hidden layer of
the discriminator and of the zoo's normal classifier (seed 0, a fixed measuring
instrument), the classifier's mode coverage and the Frechet distance in its last
hidden layer. Claims: SNNL* rises from the first to the last epoch (plain GAN,
paired over seeds, one row per space); SNNL* tracks sample quality over training (plain
GAN: per seed, the Spearman rank correlation across the trained epochs between SNNL*
and the Frechet distance, and between SNNL* and the mode coverage, with a t interval of
the mean correlation over seeds; :func:`tracking`); and the SNNL term's effect on
entanglement, coverage and Frechet distance (last epoch, paired over seeds).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from snnl.data.registry import dataset_spec
from snnl.experiments.base import (
    Claim,
    Context,
    Section,
    compare_paired,
    format_mean_std,
    mean_std,
)
from snnl.experiments.config import ReproduceConfig
from snnl.experiments.zoo import Kind
from snnl.gan import GANConfig, state_digest, train_gan
from snnl.stats import spearman

NAME = "gan"
TITLE = "GANs: the entanglement of real and generated data over training"
SOURCE = "Frosst, Papernot & Hinton 2019, sec. on GANs"
NOT_IN_PAPER = "not in the paper: tested here (issue 11)"
VARIANTS = ("plain", "snnl")
SPACES = ("input", "discriminator", "classifier")
COLORS = {"plain": "C0", "snnl": "C3"}
#: Where SNNL* is read for the tracking rows: the primary space first (the classifier's
#: hidden layers, the fixed measuring network whose last layer the Frechet distance uses).
TRACK_SPACES = (
    ("classifier_mean", "the classifier's hidden layers (mean)"),
    ("input", "input space"),
    ("discriminator_mean", "the discriminator's hidden layers (mean)"),
)
#: The quality measures SNNL* should track, and the sign of the correlation that means
#: "higher SNNL* (real and generated more entangled) goes with better samples", stated
#: in advance: a lower Frechet distance, a more even class histogram.
QUALITY = (("frechet_distance", "less"), ("coverage_entropy", "greater"))
#: No-effect margin of the mean Spearman correlation over seeds, stated in advance.
RHO_MARGIN = 0.2
#: Decimals kept of SNNL* and the quality measures before ranking them.
TRACK_DECIMALS = 4
#: Short names of the spaces and measures for the report's table.
SHORT = {"classifier_mean": "classifier", "input": "input", "discriminator_mean": "discriminator",
         "frechet_distance": "FD", "coverage_entropy": "coverage"}  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """What the experiment trains and measures (both variants, every seed)."""

    seeds: int
    arch: str = "mlp"  # --full: "dcgan" where the images' sides are multiples of 4
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3  # Adam (betas 0.5, 0.999), both networks
    latent_dim: int = 64
    generator_kwargs: tuple[tuple[str, Any], ...] = (("widths", (128, 256)),)
    discriminator_kwargs: tuple[tuple[str, Any], ...] = (("widths", (256, 128)),)
    snnl_alpha: float = 1.0  # the "snnl" variant: loss_G -= alpha * sum_l SNNL*
    snnl_target: str = "discriminator"
    snnl_temperature_mode: str = "learned"
    eval_samples: int = 1000  # generated and held-out real samples for coverage and FD
    entanglement_samples: int = 150  # per set, for SNNL*(real, generated)
    grid_samples: int = 8  # images per epoch kept for the sample grids (seed 0)


def _image_sides_fit_dcgan(dataset: str) -> bool:
    shape = tuple(dataset_spec(dataset).input_shape)
    return len(shape) == 3 and shape[1] % 4 == 0 and shape[2] % 4 == 0


def settings(config: ReproduceConfig) -> Settings:
    """Default: the MLP GAN, 5 epochs; ``--full``: the DCGAN-style pair, 10 epochs.

    Cost (OMP_NUM_THREADS=1, 2 shared cores at load ~8): default, 3 seeds, the zoo's
    classifier reused: 156 s wall, 88 s CPU for the whole ``snnl reproduce
    --experiments gan`` process; a DCGAN epoch (32 channels) took 55 s CPU (2 threads).
    """
    if config.full:
        dcgan = _image_sides_fit_dcgan(config.dataset)
        return Settings(
            seeds=config.seeds,
            arch="dcgan" if dcgan else "mlp",
            epochs=config.epochs or 10,
            lr=2e-4 if dcgan else 1e-3,
            generator_kwargs=(("channels", 32),) if dcgan else (("widths", (256, 512)),),
            discriminator_kwargs=(("channels", 32),) if dcgan else (("widths", (512, 256)),),
            entanglement_samples=300,
        )
    return Settings(seeds=config.seeds, epochs=config.epochs or 5)


# ----------------------------------------------------------------------------- running


def gan_config(s: Settings, config: ReproduceConfig, variant: str, seed: int, classifier: str):
    """The GANConfig of one variant and seed."""
    return GANConfig(
        dataset=config.dataset,
        arch=s.arch,
        epochs=s.epochs,
        batch_size=s.batch_size,
        lr=s.lr,
        latent_dim=s.latent_dim,
        generator_kwargs=dict(s.generator_kwargs),
        discriminator_kwargs=dict(s.discriminator_kwargs),
        snnl_alpha=s.snnl_alpha if variant == "snnl" else 0.0,
        snnl_target=s.snnl_target,
        snnl_temperature_mode=s.snnl_temperature_mode,
        classifier=classifier,
        eval_samples=s.eval_samples,
        entanglement_samples=s.entanglement_samples,
        grid_samples=s.grid_samples,
        seed=seed,
        data_dir=config.data_dir,
        limit_train=config.limit_train,
        limit_test=config.limit_test,
    )


def _same_run(saved: dict[str, Any], *, config: GANConfig, digest: str) -> bool:
    """A finished run is reused when its config (the classifier's path aside) and its
    classifier's weights are those asked for."""
    wanted = asdict(config)
    got = dict(saved.get("config", {}))
    wanted.pop("classifier")
    got.pop("classifier", None)
    return got == wanted and saved.get("classifier", {}).get("sha256") == digest


def coverage_entropy(share: list[float]) -> float:
    """Mode coverage as the entropy of the class histogram over its maximum:
    ``-sum_c p_c log p_c / log C`` (1 = every class equally often, 0 = one class only).

    >>> coverage_entropy([0.25] * 4), coverage_entropy([1.0, 0.0, 0.0]), coverage_entropy([1.0])
    (1.0, 0.0, 1.0)
    """
    p = np.asarray(share, dtype=np.float64)
    if p.ndim != 1 or p.size == 0 or (p < 0).any() or not math.isclose(p.sum(), 1.0):
        raise ValueError(f"share must be a non-empty histogram summing to 1, got {share!r}")
    if p.size == 1:
        return 1.0
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum() / math.log(p.size)) + 0.0  # no -0.0


def _mean_over(layers: dict[str, float]) -> float | None:
    values = [v for v in layers.values() if v is not None]
    return float(np.mean(values)) if values else None


def _curves(res: dict[str, Any]) -> dict[str, Any]:
    """Per-epoch measures of one run (epoch 0 = the untrained generator)."""
    records = [res["initial"], *res["history"]]
    layers = res["layers"]
    curves: dict[str, Any] = {
        "epochs": [r.get("epoch", 0) for r in records],
        "input": [r["entanglement"]["input"] for r in records],
    }
    for space in ("discriminator", "classifier"):
        curves[space] = {
            name: [r["entanglement"][space][name] for r in records] for name in layers[space]
        }
        curves[f"{space}_mean"] = [_mean_over(r["entanglement"][space]) for r in records]
    curves["missing"] = [r["coverage"]["num_missing"] for r in records]
    curves["coverage_entropy"] = [
        None if r["coverage"] is None else coverage_entropy(r["coverage"]["share"]) for r in records
    ]
    curves["frechet_distance"] = [r["frechet_distance"] for r in records]
    curves["discriminator_real"] = [r["discriminator_real"] for r in records]
    curves["discriminator_generated"] = [r["discriminator_generated"] for r in records]
    curves["d_loss"] = [r.get("d_loss") for r in records]
    curves["g_adversarial"] = [r.get("g_adversarial") for r in records]
    curves["final_share"] = records[-1]["coverage"]["share"]
    curves["entanglement_points"] = records[0].get("entanglement_points")
    return curves


def run(s: Settings, context: Context) -> dict[str, Any]:
    ref = context.zoo.get(Kind.NORMAL, 0)
    classifier = ref.load()
    digest = state_digest(classifier)
    dataset = context.zoo.dataset
    path = str(ref.path.resolve())
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    samples: dict[str, list[Any]] = {}
    layers: dict[str, list[str]] = {}
    trainer = partial(train_gan, dataset=dataset)
    for seed in range(s.seeds):
        for variant in VARIANTS:
            config = gan_config(s, context.config, variant, seed, path)
            same = partial(_same_run, config=config, digest=digest)
            # the zoo's cache: trained in this process with one thread, or a finished run
            # of this config and classifier reused
            folder, res = context.zoo.serve(f"gan-{variant}", config, trainer, same=same)
            layers = res["layers"]
            runs[variant].append(
                {
                    "seed": seed,
                    "path": str(folder.relative_to(context.out)),
                    "health": res["health"]["verdict"],
                    "seconds": res["timing"]["total_seconds"],
                    "curves": _curves(res),
                }
            )
            if seed == 0:
                samples[variant] = [r["samples"] for r in [res["initial"], *res["history"]]]
    first = runs[VARIANTS[0]][0]["curves"]
    n = first.get("entanglement_points") or s.entanglement_samples
    return {
        "dataset": dataset.name,
        "classes": dataset.num_classes,
        "classifier": {
            **ref.describe(context.out),
            "test_accuracy": ref.results()["final"]["test_accuracy"],
            "health": ref.health,
        },
        "layers": layers,
        "indistinguishable": math.log((2 * n - 1) / (n - 1)),
        "runs": runs,
        "samples": samples,
        "gan_config_example": asdict(gan_config(s, context.config, "snnl", 0, path)),
    }


# ----------------------------------------------------------------------------- report


def _healthy(results: dict[str, Any], variant: str) -> list[dict[str, Any]]:
    return [r for r in results["runs"][variant] if r["health"] == "ok"]


def _stack(runs: list[dict[str, Any]], key: str, layer: str | None = None) -> np.ndarray:
    rows = [r["curves"][key] if layer is None else r["curves"][key][layer] for r in runs]
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)


def _band(ax, runs: list[dict[str, Any]], key: str, variant: str, layer: str | None = None):
    if not runs:
        return
    values = _stack(runs, key, layer)
    epochs = np.array(runs[0]["curves"]["epochs"])
    mean = np.nanmean(values, 0)
    std = np.nanstd(values, 0, ddof=1) if len(runs) > 1 else np.zeros_like(mean)
    ax.plot(epochs, mean, color=COLORS[variant], marker="o", ms=3, label=variant)
    ax.fill_between(epochs, mean - std, mean + std, color=COLORS[variant], alpha=0.2)


def _entanglement_figure(results: dict[str, Any], path: Path) -> None:
    from snnl.figures import plt, save_figure

    panels = [("input", None, "input space")]
    panels += [
        ("discriminator", n, f"discriminator {n}") for n in results["layers"]["discriminator"]
    ]
    panels += [("classifier", n, f"classifier {n}") for n in results["layers"]["classifier"]]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.7 * rows), squeeze=False)
    for ax, (key, layer, title) in zip(axes.flat, panels, strict=False):
        for variant in VARIANTS:
            _band(ax, _healthy(results, variant), key, variant, layer)
        ax.axhline(results["indistinguishable"], color="grey", ls="--", lw=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes[0, 0].set_ylabel("SNNL*(real, generated)")
    axes[0, 0].legend(frameon=False, fontsize=8)
    fig.suptitle(
        "SNNL* of real vs generated data (fresh samples each epoch; mean +- std over seeds; "
        "dashed: indistinguishable)",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, path)


def _quality_figure(results: dict[str, Any], path: Path) -> None:
    from snnl.figures import plt, save_figure

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for variant in VARIANTS:
        runs = _healthy(results, variant)
        _band(axes[0], runs, "missing", variant)
        _band(axes[1], runs, "frechet_distance", variant)
        if runs:
            share = np.array([r["curves"]["final_share"] for r in runs])
            offset = -0.2 if variant == "plain" else 0.2
            x = np.arange(share.shape[1]) + offset
            axes[2].bar(x, share.mean(0), width=0.4, color=COLORS[variant], label=variant)
    c = results["classes"]
    axes[0].set_title("classes missing (share < 1/(4C))", fontsize=10)
    axes[1].set_title("Frechet distance, classifier's last hidden layer", fontsize=10)
    axes[2].axhline(1 / c, color="grey", ls="--", lw=0.8)
    axes[2].axhline(0.25 / c, color="grey", ls=":", lw=0.8)
    axes[2].set_title("class shares of generated samples, last epoch", fontsize=10)
    axes[2].set_xticks(range(c))
    axes[2].set_xlabel("class (classifier's prediction)")
    for ax in axes[:2]:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(frameon=False, fontsize=8)
    axes[2].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def _samples_figure(results: dict[str, Any], path: Path) -> None:
    from snnl.figures import plt, save_figure

    variants = [v for v in VARIANTS if results["samples"].get(v)]
    epochs = len(results["samples"][variants[0]])
    per = len(results["samples"][variants[0]][0])
    fig, axes = plt.subplots(
        epochs,
        len(variants),
        figsize=(0.75 * per * len(variants) + 0.6, 0.8 * epochs + 0.6),
        squeeze=False,
    )
    for j, variant in enumerate(variants):
        for e, images in enumerate(results["samples"][variant]):
            x = np.array(images, dtype=float)  # (per, C, H, W) or (per, C, L)
            if x.ndim == 3:  # 1-D inputs: show each as one row of pixels
                x = x[:, :, None, :]
            tiles = np.concatenate([np.moveaxis(img, 0, -1) for img in x], axis=1)
            ax = axes[e, j]
            ax.imshow(
                tiles.squeeze(-1) if tiles.shape[-1] == 1 else tiles, cmap="gray", vmin=0, vmax=1
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"epoch {e}", fontsize=8)
            if e == 0:
                ax.set_title(variant, fontsize=10)
    fig.suptitle("Generated samples per epoch (seed 0, the same noise every epoch)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def tracking(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per healthy plain run: the Spearman correlation across the trained epochs
    (1..E; epoch 0, the untrained generator, left out: it makes any rise correlate)
    between SNNL* in each space and each quality measure, from the saved curves.

    Values are rounded to ``TRACK_DECIMALS`` decimals first: differences below that
    (the float noise of an SNNL* near 0) are ties, not a ranking.

    Returns ``[{"seed", "epochs", "rho": {quality: {space: rho or None}}}]``; a curve
    missing from older results gives None.
    """

    def rounded(values: list[float | None]) -> list[float | None]:
        return [None if v is None else round(v, TRACK_DECIMALS) for v in values[1:]]

    out = []
    for r in _healthy(results, "plain"):
        c = r["curves"]
        rho = {
            quality: {
                space: spearman(rounded(c[space]), rounded(c[quality]))
                if space in c and quality in c
                else None
                for space, _ in TRACK_SPACES
            }
            for quality, _ in QUALITY
        }
        out.append({"seed": r["seed"], "epochs": len(c["epochs"]) - 1, "rho": rho})
    return out


def _tracking_figure(results: dict[str, Any], path: Path) -> None:
    from snnl.figures import plt, save_figure

    runs = _healthy(results, "plain")
    rhos = {t["seed"]: t["rho"] for t in tracking(results)}
    cols = max(1, min(3, len(runs)))
    rows = max(1, -(-len(runs) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.9 * cols, 2.9 * rows), squeeze=False)
    for ax, r in zip(axes.flat, runs, strict=False):
        c = r["curves"]
        epochs = c["epochs"][1:]
        # as ranked: rounded to TRACK_DECIMALS (float noise near 0 is flat)
        snnl = [np.nan if v is None else round(v, TRACK_DECIMALS) for v in c["classifier_mean"][1:]]
        fd = [np.nan if v is None else v for v in c["frechet_distance"][1:]]
        ax.plot(epochs, snnl, color="C0", marker="o", ms=3)
        ax.set_ylabel("SNNL*, classifier layers", color="C0", fontsize=8)
        ax.tick_params(axis="y", labelcolor="C0", labelsize=7)
        twin = ax.twinx()
        twin.plot(epochs, fd, color="C1", marker="s", ms=3)
        twin.set_ylabel("Frechet distance", color="C1", fontsize=8)
        twin.tick_params(axis="y", labelcolor="C1", labelsize=7)
        rho = rhos[r["seed"]]
        fmt = lambda v: "n/a" if v is None else f"{v:+.2f}"  # noqa: E731
        ax.set_title(
            f"seed {r['seed']}: rho(SNNL*, FD) {fmt(rho['frechet_distance']['classifier_mean'])}"
            f", rho(SNNL*, coverage) {fmt(rho['coverage_entropy']['classifier_mean'])}",
            fontsize=8,
        )
        ax.set_xlabel("epoch")
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(runs) :]:
        ax.axis("off")
    fig.suptitle(
        "Plain GAN: SNNL*(real, generated) in the classifier's hidden layers (mean) and the "
        "Frechet distance per trained epoch, per seed",
        fontsize=9,
    )
    fig.tight_layout()
    save_figure(fig, path)


def _cell(values: list[float | None], digits: int = 3) -> str:
    vals = [v for v in values if v is not None]
    return format_mean_std(mean_std(vals), digits) if vals else "n/a"


def _last(runs: list[dict[str, Any]], key: str) -> list[float | None]:
    return [r["curves"][key][-1] for r in runs]


def section(results: dict[str, Any], fig_dir: Path) -> Section:
    _entanglement_figure(results, fig_dir / "gan_entanglement.png")
    _quality_figure(results, fig_dir / "gan_quality.png")
    _samples_figure(results, fig_dir / "gan_samples.png")
    _tracking_figure(results, fig_dir / "gan_tracking.png")
    s = results["settings"]
    clf = results["classifier"]
    plain, snnl = _healthy(results, "plain"), _healthy(results, "snnl")
    n_bad = sum(len(results["runs"][v]) for v in VARIANTS) - len(plain) - len(snnl)
    seconds = sum(r["seconds"] for v in VARIANTS for r in results["runs"][v])
    lines = [
        f"Dataset `{results['dataset']}`; a `{s['arch']}` GAN (non-saturating loss, Adam "
        f"lr {s['lr']:g}, betas 0.5/0.999, batch {s['batch_size']}, latent {s['latent_dim']}), "
        f"{s['epochs']} epochs, {s['seeds']} seed(s), two variants per seed from the same "
        "initialisation, data order and noise: **plain**, and **snnl** where the generator "
        f"also maximises SNNL*(real, generated) in the {s['snnl_target']}'s hidden layers "
        f"(loss_G - {s['snnl_alpha']:g} * sum over layers, T {s['snnl_temperature_mode']}).",
        "",
        f"Measured after every epoch (epoch 0: the untrained generator) on "
        f"{s['eval_samples']} FRESH samples of the current generator (noise seeded per "
        f"epoch) and as many held-out real test images: SNNL* (the SNNL at its optimal "
        f"temperature) of {s['entanglement_samples']} real vs {s['entanglement_samples']} "
        "generated points labelled by membership, in input space and in every hidden layer "
        "of the discriminator and of the zoo's normal classifier "
        f"(`{clf['path']}`, test accuracy {clf['test_accuracy']:.4f}); the classifier's "
        "histogram of generated samples (a class is *missing* below a share of 1/(4C)); "
        "the Frechet distance between Gaussians fitted to real and generated features of "
        "the classifier's last hidden layer (float64, exact square root; biased upwards "
        "at this sample size, so only comparable across these runs). SNNL* cannot exceed "
        f"{results['indistinguishable']:.4f} (the two sets indistinguishable; dashed line).",
        "",
        f"Training and measuring took {seconds:.0f} s of wall time for the "
        f"{sum(len(results['runs'][v]) for v in VARIANTS)} GANs (recorded per run).",
    ]
    if n_bad:
        lines += ["", f"{n_bad} run(s) diverged and are left out of every figure and claim."]
    lines += [
        "",
        "Last epoch (mean +- std over seeds):",
        "",
        "| measure | plain | snnl |",
        "|---|---|---|",
    ]
    rows = [
        ("SNNL* input space", "input"),
        ("SNNL* discriminator, mean over layers", "discriminator_mean"),
        ("SNNL* classifier, mean over layers", "classifier_mean"),
        ("classes missing", "missing"),
        ("Frechet distance", "frechet_distance"),
        ("D(real) (mean probability)", "discriminator_real"),
        ("D(generated)", "discriminator_generated"),
    ]
    for label, key in rows:
        lines.append(f"| {label} | {_cell(_last(plain, key))} | {_cell(_last(snnl, key))} |")
    lines += [
        "",
        "The claim that SNNL* rises is tested on the plain GAN, first vs last epoch, paired "
        "over seeds, in each space separately. Input space and the classifier's layers are "
        "fixed measuring spaces; the discriminator's layers change with training (the "
        "discriminator learns to separate the two sets), so a rise there means the "
        "generator outpaces it.",
        "",
        "Does SNNL* track sample quality? Per plain run, the Spearman rank correlation "
        "across the trained epochs (1 to the last; the untrained epoch 0 left out) between "
        "SNNL* and the Frechet distance (expected negative: more entangled, closer to the "
        "real data) and between SNNL* and the mode coverage, the entropy of the "
        "classifier's class histogram of generated samples over log C (expected positive); "
        f"values rounded to {TRACK_DECIMALS} decimals before ranking (smaller differences "
        "tie):",
        "",
        "| seed | epochs | "
        + " | ".join(
            f"rho({SHORT[q]}, SNNL* {SHORT[space]})"
            for q, _ in QUALITY
            for space, _ in TRACK_SPACES
        )
        + " |",
        "|---|---|" + "---|" * (len(QUALITY) * len(TRACK_SPACES)),
    ]
    for row in tracking(results):
        cells = [
            "n/a" if v is None else f"{v:+.2f}"
            for q, _ in QUALITY
            for v in (row["rho"][q][space] for space, _ in TRACK_SPACES)
        ]
        lines.append(f"| {row['seed']} | {row['epochs']} | " + " | ".join(cells) + " |")
    return Section(
        title=TITLE,
        markdown="\n".join(lines),
        figures=[
            ("gan_entanglement.png", "SNNL*(real, generated) over training, per space and layer"),
            ("gan_quality.png", "Mode coverage and Frechet distance over training"),
            ("gan_samples.png", "Generated samples per epoch, both variants (seed 0)"),
            ("gan_tracking.png", "SNNL* and the Frechet distance per epoch, per seed (plain)"),
        ],
    )


def _paired_claim(
    text: str,
    source: str,
    setting: str,
    a: list[float | None],
    b: list[float | None],
    labels: tuple[str, str],
    expect: str,
    unhealthy: int,
) -> Claim:
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if len(pairs) < 2:
        note = f"{unhealthy} unhealthy run(s) left out" if unhealthy else "fewer than two seeds"
        measured = f"{len(pairs)} seed(s) measured"
        return Claim(text, source, setting, measured, "inconclusive", note)
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    cmp = compare_paired(xs, ys, expect=expect, label=f"{labels[0]} - {labels[1]}")
    verdict, note = cmp
    if unhealthy:
        note += f"; {unhealthy} unhealthy run(s) left out"
    measured = (
        f"{labels[0]} {format_mean_std(mean_std(xs), 3)} vs {labels[1]} "
        f"{format_mean_std(mean_std(ys), 3)}"
    )
    return Claim(text, source, setting, measured, verdict, note, (cmp,))  # type: ignore[arg-type]


def _by_seed(results: dict[str, Any], variant: str) -> dict[int, dict[str, Any]]:
    return {r["seed"]: r for r in _healthy(results, variant)}


def _rho_text(rows: list[dict[str, Any]], quality: str, space: str) -> str:
    values = [r["rho"][quality][space] for r in rows]
    cells = ", ".join(
        f"seed {r['seed']} {'n/a' if v is None else f'{v:+.2f}'}"
        for r, v in zip(rows, values, strict=True)
    )
    got = [v for v in values if v is not None]
    return f"{cells} (mean {np.mean(got):+.2f})" if got else cells


def _tracking_claims(results: dict[str, Any], setting: str, unhealthy: int) -> list[Claim]:
    """SNNL* tracks sample quality: the mean over seeds of the per-seed Spearman rho
    (primary: SNNL* in the classifier's hidden layers) with a t interval (the paired t
    of rho against 0), margin RHO_MARGIN; the other spaces' rho shown as secondary."""
    rows = tracking(results)
    primary, where = TRACK_SPACES[0]
    out = []
    for quality, expect in QUALITY:
        what = (
            "the Frechet distance (classifier's last hidden layer)"
            if quality == "frechet_distance"
            else "the mode coverage (entropy of the classifier's class histogram / log C)"
        )
        sign = "negative" if expect == "less" else "positive"
        rhos = [r["rho"][quality][primary] for r in rows]
        got = [v for v in rhos if v is not None]
        cmp = compare_paired(
            got, [0.0] * len(got), expect=expect, margin=RHO_MARGIN,
            label=f"mean Spearman rho (SNNL*, {quality})",
        )  # fmt: skip
        verdict, note = cmp
        if len(got) < 2:
            note = f"fewer than two seeds with a defined correlation ({len(got)})"
        if len(got) < len(rhos):
            note += f"; {len(rhos) - len(got)} seed(s) without one (fewer than 3 epochs, or flat)"
        if unhealthy:
            note += f"; {unhealthy} unhealthy run(s) left out"
        secondary = "; ".join(
            f"{label}: {_rho_text(rows, quality, space)}" for space, label in TRACK_SPACES[1:]
        )
        out.append(
            Claim(
                "SNNL between real and generated data is a good tool for understanding GAN "
                f"training: across epochs it tracks {what} (expected: a {sign} rank "
                "correlation, higher SNNL* = better samples)",
                SOURCE + " (thread: 'a good tool for understanding GAN training')",
                f"{setting}, plain GAN; per seed the Spearman rho across the trained epochs "
                f"(1..{results['settings']['epochs']}, the untrained epoch 0 left out) "
                f"between SNNL* in {where} and the measure; a t interval of the mean rho "
                f"over seeds (paired t against 0); margin {RHO_MARGIN:g}",
                f"Spearman rho, SNNL* in {where}: {_rho_text(rows, quality, primary)}; "
                f"secondary (not the verdict): {secondary}",
                verdict,
                note,
                (cmp,),
            )
        )
    return out


def claims(results: dict[str, Any]) -> list[Claim]:
    s = results["settings"]
    setting = f"{results['dataset']}, {s['arch']} GAN, {s['epochs']} epochs"
    out: list[Claim] = []
    plain = _healthy(results, "plain")
    bad_plain = len(results["runs"]["plain"]) - len(plain)
    for key, where in (
        ("input", "input space"),
        ("classifier_mean", "the classifier's hidden layers (mean)"),
        ("discriminator_mean", "the discriminator's hidden layers (mean)"),
    ):
        out.append(
            _paired_claim(
                f"SNNL between real and generated data rises during training ({where})",
                SOURCE,
                f"{setting}, plain GAN",
                [r["curves"][key][-1] for r in plain],
                [r["curves"][key][1] for r in plain],
                ("last epoch", "first epoch"),
                "greater",
                bad_plain,
            )
        )
    out += _tracking_claims(results, setting, bad_plain)
    plain_by, snnl_by = _by_seed(results, "plain"), _by_seed(results, "snnl")
    seeds = sorted(set(plain_by) & set(snnl_by))
    unhealthy = sum(len(results["runs"][v]) for v in VARIANTS) - len(plain_by) - len(snnl_by)
    target = s["snnl_target"]
    for key, what, expect in (
        (f"{target}_mean", f"raises SNNL* in the {target}'s hidden layers (its target)", "greater"),
        ("classifier_mean", "raises SNNL* in the classifier's hidden layers", "greater"),
        ("input", "raises SNNL* in input space", "greater"),
        ("missing", "leaves fewer classes missing", "less"),
        ("frechet_distance", "lowers the Frechet distance", "less"),
    ):
        out.append(
            _paired_claim(
                f"Adding the SNNL term to the generator's loss {what} (last epoch)",
                NOT_IN_PAPER,
                f"{setting}, alpha {s['snnl_alpha']:g} vs plain, paired by seed",
                [snnl_by[k]["curves"][key][-1] for k in seeds],
                [plain_by[k]["curves"][key][-1] for k in seeds],
                ("snnl", "plain"),
                expect,
                unhealthy,
            )
        )
    return out
