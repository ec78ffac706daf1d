"""The settings of one ``snnl reproduce`` call: :class:`ReproduceConfig`.

A module of its own, below both the experiments' contract (:mod:`snnl.experiments.base`)
and the model zoo (:mod:`snnl.experiments.zoo`), which both need it; it imports nothing
of snnl. Which experiment names exist is the registry's business
(:func:`snnl.experiments.registry`), checked by the runner (:func:`snnl.runner.check`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ReproduceConfig"]


@dataclass
class ReproduceConfig:
    """Settings of one ``snnl reproduce`` call (saved in results.json with each
    experiment's results).

    Example:
        >>> config = ReproduceConfig(dataset="digits", seeds=2, experiments=["dknn"])
        >>> config.seeds, config.full
        (2, False)
        >>> ReproduceConfig(seeds=0)
        Traceback (most recent call last):
        ...
        ValueError: seeds must be >= 1, got 0
    """

    dataset: str = "mnist5k"
    seeds: int = 3
    full: bool = False  # the paper's longer settings (more epochs, seeds, bigger models)
    data_dir: str | None = None
    experiments: list[str] = field(default_factory=list)  # empty: every registered one
    limit_train: int | None = None
    limit_test: int | None = None
    epochs: int | None = None  # override the experiments' default epochs
    model: str | None = None  # override the default model for the dataset
    force: bool = False  # retrain runs whose saved config differs from the one asked for
    workers: int | None = None  # parallel training processes (None: cores, at most 8)

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        for name in ("limit_train", "limit_test"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise ValueError(f"{name} must be >= 2, got {value}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if isinstance(self.experiments, str) or not all(
            isinstance(name, str) for name in self.experiments
        ):
            raise TypeError(f"experiments must be a list of names, got {self.experiments!r}")
        self.experiments = list(self.experiments)
