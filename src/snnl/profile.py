"""A representation profile of any model: per hidden layer, on clean, corrupted and
adversarial inputs, the SNNL at the optimal temperature, mean class selectivity,
dimensionality and participation ratio, with the layer's Lipschitz bound.

:func:`profile_model` is the Python call behind ``snnl profile``:

- inputs: the first ``limit`` examples of a split of a :class:`snnl.data.DataSplits`;
  their corrupted version (a mix: example i gets corruption ``i mod K`` of the list, at
  its severity, :func:`snnl.corruptions.corrupt`); their adversarial version (PGD, L-inf,
  :func:`snnl.attacks.pgd`, random start, against the true labels).
- measures per hidden layer and input kind, on the layer's output over those examples
  (eval mode): SNNL* = min_T SNNL (:func:`snnl.temperature.snnl_star`, squared
  Euclidean) and its temperature, the mean over units of the class selectivity index
  (:func:`snnl.measures.class_selectivity`; convolutional units are feature maps averaged
  over space), the number of principal components for 95% of the variance
  (:func:`snnl.measures.dimensionality`) and the participation ratio
  (:func:`snnl.measures.participation_ratio`); the model's accuracy on each input kind.
- bounds: :func:`snnl.lipschitz.layer_bounds`: the product of the layer bounds from the
  input up to the layer (``cumulative``) and the layer's own bound; ``None`` with the
  reason where the model cannot be bounded.

:func:`write_profile` writes ``profile.json`` (atomically) and a figure (one panel per
measure, layers on the x axis, one line per input kind, plus the bounds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from snnl import _io
from snnl._checks import check_int, check_real
from snnl.attacks import pgd
from snnl.corruptions import corrupt, corruption_names
from snnl.data import DataSplits
from snnl.lipschitz import layer_bounds
from snnl.measures import accuracy, class_selectivity, dimensionality, participation_ratio
from snnl.taps import LayerTap, eval_mode, resolve_layers
from snnl.temperature import snnl_star

__all__ = [
    "INPUT_KINDS",
    "MEASURES",
    "DEFAULT_SEVERITY",
    "profile_model",
    "layer_activations",
    "write_profile",
    "profile_figure",
    "format_profile",
]

#: The input kinds of a profile, in order.
INPUT_KINDS: tuple[str, ...] = ("clean", "corrupted", "adversarial")
#: The per-layer measures of a profile: key -> label.
MEASURES: dict[str, str] = {
    "snnl": "SNNL at the optimal T",
    "selectivity": "mean class selectivity",
    "dimensionality": "dimensionality (95% variance)",
    "participation_ratio": "participation ratio",
}
#: Severity of the default corruption mix (the 15 corruptions of CIFAR-10-C).
DEFAULT_SEVERITY = 3


def _default_eps(x: Tensor) -> float:
    """PGD radius: 8/255 for colour images (the CIFAR-10 convention), 0.1 otherwise."""
    return 8 / 255 if x.dim() == 4 and x.shape[1] == 3 else 0.1


def layer_activations(
    model: nn.Module, x: Tensor, layers: Sequence[str], *, batch_size: int = 512
) -> dict[str, Tensor]:
    """Each layer's output over ``x`` in eval mode (no gradient), unflattened, on the CPU.

    Shapes: x (N, ...) -> {name: (N, *layer output shape)}.
    """
    device = next(iter(model.parameters()), x).device
    out: dict[str, list[Tensor]] = {n: [] for n in layers}
    with eval_mode(model), torch.no_grad(), LayerTap(model, list(layers)) as tap:
        for start in range(0, x.shape[0], batch_size):
            model(x[start : start + batch_size].to(device))
            for n in layers:
                out[n].append(tap.outputs[n].detach().cpu())
    return {n: torch.cat(v) for n, v in out.items()}


def _layer_measures(acts: Tensor, y: Tensor, variance: float) -> dict[str, float]:
    flat = acts.reshape(acts.shape[0], -1)
    star = snnl_star(flat, y)
    return {
        "snnl": float(star.value),
        "temperature": star.temperature,
        "selectivity": float(class_selectivity(acts, y).mean()),
        "dimensionality": float(dimensionality(acts, variance)),
        "participation_ratio": float(participation_ratio(acts)),
    }


def _corruption_mix(names: Sequence[str], severity: int) -> list[tuple[str, int]]:
    return [(n, severity) for n in names]


def _apply_mix(x: Tensor, mix: Sequence[tuple[str, int]], generator: torch.Generator) -> Tensor:
    """Example i gets mix[i mod K]; each corruption runs once on its share of the batch."""
    out = x.clone()
    index = torch.arange(x.shape[0])
    for k, (name, severity) in enumerate(mix):
        share = index[index % len(mix) == k]
        if share.numel():
            out[share] = corrupt(x[share], name, severity, generator=generator)
    return out


def profile_model(
    model: nn.Module,
    dataset: DataSplits,
    *,
    layers: str | Sequence[str] = "hidden",
    split: str = "test",
    limit: int | None = 1000,
    corruptions: Sequence[str] | None = None,
    severity: int = DEFAULT_SEVERITY,
    eps: float | None = None,
    steps: int = 10,
    variance: float = 0.95,
    seed: int = 0,
    bounds: bool = True,
    batch_size: int = 512,
) -> dict[str, Any]:
    """Profile ``model``'s hidden layers on clean, corrupted and adversarial inputs.

    Args:
        model: maps inputs in [0, 1] to logits (normalisation inside the model).
        dataset: the data; ``split`` ("test" or "train") is profiled.
        layers: "hidden" (``model.hidden_layer_names`` or every activation module) or names.
        limit: use the first ``limit`` examples of the split (None: all).
        corruptions: the corruption mix (default: the 15 of CIFAR-10-C), each at
            ``severity``; example i gets corruption i mod K. Images only (N, C, H, W);
            for other inputs (e.g. mnist1d vectors) the corrupted kind is left out.
        eps: PGD radius in input units, L-inf (default 8/255 for colour, 0.1 for grey
            or 1-D inputs); ``steps`` steps of eps / 4 from a random start.
        variance: the share of variance for the dimensionality.
        seed: seeds the corruptions and the PGD start.
        bounds: compute the Lipschitz bounds (:func:`snnl.lipschitz.layer_bounds`).

    Returns:
        A JSON-ready dict: ``settings``, ``layers``, ``inputs`` (the kinds measured),
        ``accuracy[kind]``, ``measures[layer][kind][measure]`` (snnl, temperature,
        selectivity, dimensionality, participation_ratio) and ``lipschitz`` (``cumulative``
        and ``layer`` dicts by layer, ``product``, or ``error``).

    >>> from snnl.data import load_dataset
    >>> from snnl.models import MLP
    >>> _ = torch.manual_seed(0)
    >>> ds = load_dataset("digits", limit_train=100, limit_test=60)
    >>> prof = profile_model(MLP((1, 8, 8), 10, widths=(16,)), ds, limit=60, steps=2)
    >>> prof["layers"], prof["inputs"]
    (['relu1'], ['clean', 'corrupted', 'adversarial'])
    >>> sorted(prof["measures"]["relu1"]["adversarial"])[:3]
    ['dimensionality', 'participation_ratio', 'selectivity']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(dataset, DataSplits):
        raise TypeError(f"dataset must be snnl.data.DataSplits, got {type(dataset).__name__}")
    if split not in ("test", "train"):
        raise ValueError(f"unknown split {split!r}; expected one of: test, train")
    x = dataset.x_test if split == "test" else dataset.x_train
    y = dataset.y_test if split == "test" else dataset.y_train
    if limit is not None:
        limit = check_int("limit", limit, low=2)
        x, y = x[:limit], y[:limit]
    if x.shape[0] < 2:
        raise ValueError(f"the {split} split has {x.shape[0]} example(s); need at least 2")
    names = list(resolve_layers(model, layers))
    steps = check_int("steps", steps, low=1)
    variance = check_real("variance", variance, low=0.0, high=1.0, low_inclusive=False)
    images = x.dim() == 4 and x.shape[1] in (1, 3) and min(x.shape[-2:]) >= 8
    mix_names = list(corruptions) if corruptions is not None else corruption_names("hendrycks")
    if not mix_names and corruptions is not None:
        raise ValueError("corruptions must name at least one corruption (or be None)")
    mix = _corruption_mix(mix_names, severity) if images else []
    if images:
        for n, s in mix:  # validate before the expensive work
            corrupt(x[:1], n, s, generator=torch.Generator().manual_seed(0))
    eps = _default_eps(x) if eps is None else check_real("eps", eps, low=0.0)
    step_size = eps / 4 if eps > 0 else 1.0

    device = next(iter(model.parameters()), x).device
    inputs: dict[str, Tensor] = {"clean": x}
    if mix:
        inputs["corrupted"] = _apply_mix(x, mix, torch.Generator().manual_seed(seed))
    g = torch.Generator(device=device).manual_seed(seed + 1)
    inputs["adversarial"] = pgd(
        model, x.to(device), y.to(device), eps, step_size, steps, generator=g,
        batch_size=batch_size,
    ).cpu()  # fmt: skip

    measures: dict[str, dict[str, dict[str, float]]] = {n: {} for n in names}
    acc: dict[str, float] = {}
    for kind, xs in inputs.items():
        acc[kind] = accuracy(model, xs, y, batch_size=batch_size)
        acts = layer_activations(model, xs, names, batch_size=batch_size)
        for n in names:
            measures[n][kind] = _layer_measures(acts[n], y, variance)

    lipschitz: dict[str, Any] = {}
    if bounds:
        try:
            res = layer_bounds(model, tuple(x.shape[1:]))
        except (TypeError, ValueError) as err:
            lipschitz = {"error": str(err)}
        else:
            missing = [n for n in names if n not in res.cumulative]
            lipschitz = {
                "cumulative": {n: res.cumulative.get(n) for n in names},
                "layer": {n: res.bounds.get(n) for n in names},
                "product": res.product,
            }
            if missing:
                lipschitz["note"] = f"{missing} sit inside blocks bounded as a whole: no bound"
    settings = {
        "split": split,
        "examples": int(x.shape[0]),
        "layers": names,
        "corruption_mix": [[n, s] for n, s in mix],
        "corruption_assignment": "example i gets corruption i mod K" if mix else None,
        "pgd": {"norm": "inf", "eps": eps, "step_size": step_size, "steps": steps,
                "random_start": True},
        "variance": variance,
        "seed": seed,
        "distance": "euclidean",
    }  # fmt: skip
    return {
        "dataset": dataset.name,
        "settings": settings,
        "layers": names,
        "inputs": list(inputs),
        "accuracy": acc,
        "measures": measures,
        "lipschitz": lipschitz,
    }


def profile_figure(profile: dict[str, Any]):
    """One panel per measure (layers on x, a line per input kind) and one for the bounds."""
    from snnl.figures import plt

    layers = profile["layers"]
    bounds = profile.get("lipschitz", {}).get("cumulative")
    panels = list(MEASURES) + (["bound"] if bounds else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.2), squeeze=False)
    xs = range(len(layers))
    for ax, key in zip(axes[0], panels, strict=True):
        if key == "bound":
            values = [bounds[n] if bounds[n] is not None else math.nan for n in layers]
            ax.plot(xs, values, "o-", color="k")
            finite = [v for v in values if v > 0 and math.isfinite(v)]
            if finite and max(finite) / min(finite) > 20:  # products grow multiplicatively
                ax.set_yscale("log")
            ax.set_title("Lipschitz bound, input -> layer", fontsize=9)
        else:
            for i, kind in enumerate(profile["inputs"]):
                values = [profile["measures"][n][kind][key] for n in layers]
                ax.plot(xs, values, "o-", color=f"C{i}", label=kind)
            ax.set_title(MEASURES[key], fontsize=9)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(layers, rotation=45, ha="right", fontsize=8)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=len(labels), frameon=False, fontsize=9)
    fig.suptitle(
        f"profile on {profile['dataset']} ({profile['settings']['examples']} examples)",
        x=0.01,
        ha="left",
    )
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


def format_profile(profile: dict[str, Any]) -> str:
    """The profile as a text table: one row per layer and input kind."""
    lines = [
        "accuracy    : " + ", ".join(f"{k} {v:.4f}" for k, v in profile["accuracy"].items()),
    ]
    pgd_set = profile["settings"]["pgd"]
    mix = profile["settings"]["corruption_mix"]
    if mix:
        severities = sorted({s for _, s in mix})
        lines.append(
            f"corrupted   : {len(mix)} corruptions at severity "
            f"{', '.join(map(str, severities))}, example i gets corruption i mod {len(mix)}"
        )
    lines.append(
        f"adversarial : PGD L-inf eps {pgd_set['eps']:.4g}, {pgd_set['steps']} steps of "
        f"{pgd_set['step_size']:.4g}, random start"
    )
    header = (
        f"{'layer':<12} {'input':<12} {'SNNL*':>9} {'T*':>10} {'select.':>8} {'dim':>5} {'PR':>8}"
    )
    bounds = profile.get("lipschitz", {})
    if "cumulative" in bounds:
        header += f" {'bound':>10}"
    lines += ["", header, "-" * len(header)]
    for n in profile["layers"]:
        for kind in profile["inputs"]:
            m = profile["measures"][n][kind]
            row = (
                f"{n:<12} {kind:<12} {m['snnl']:9.4f} {m['temperature']:10.4g} "
                f"{m['selectivity']:8.4f} {int(m['dimensionality']):5d} "
                f"{m['participation_ratio']:8.3f}"
            )
            if "cumulative" in bounds and kind == profile["inputs"][0]:
                value = bounds["cumulative"][n]
                row += f" {value:10.4g}" if value is not None else f" {'-':>10}"
            lines.append(row)
    if "error" in bounds:
        lines.append(f"Lipschitz bounds: not computed ({bounds['error']})")
    return "\n".join(lines)


def write_profile(profile: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``profile.json`` (atomically) and ``profile.png`` into ``out_dir``."""
    from snnl.figures import save_figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "profile.json", out / "profile.png"
    _io.write_json(json_path, profile)
    save_figure(profile_figure(profile), png_path)
    return json_path, png_path
