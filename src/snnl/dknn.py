"""Deep k-Nearest Neighbors with conformal calibration (Papernot & McDaniel 2018).

Algorithm (for layers l = 1..L of a trained network, k neighbours):

1. Index the training set's representations at every layer.
2. Nonconformity of input x with candidate label j::

       alpha(x, j) = sum_l (k - count_l(x, j))

   where count_l(x, j) is how many of x's k nearest training neighbours at
   layer l have label j.
3. Calibration on held-out labelled data: A = {alpha(x, y_true)}, all of
   them (the reference code drops zero scores with ``np.trim_zeros``, which
   changes every p-value; this one does not).
4. For a test input z: ``p_j(z) = |{a in A : a >= alpha(z, j)}| / |A|``,
   computed for all points and classes at once with ``torch.searchsorted``
   on the sorted A.
5. prediction = argmax_j p_j (first index on ties), credibility = max_j p_j,
   confidence = 1 - second largest p_j.

The result also carries the per-layer neighbour label counts and the
neighbour agreement (how many of the k neighbours belong to the predicted
class), the SNNL paper's outlier signal; :meth:`DkNN.compare_agreement` sets
it against the calibration data.

Search is exact: faiss ``IndexFlatL2`` / ``IndexFlatIP`` (default) or a
blocked pure-torch search. ``metric="cosine"`` centres every layer with the
training mean and L2-normalises (as the paper did) and then searches by
inner product. Wide layers can be stored in float16 and/or projected with a
per-layer PCA fitted on the training representations.

>>> import torch
>>> from snnl.models import MLP
>>> torch.manual_seed(0) and None
>>> model = MLP((4,), 2, widths=(8,))
>>> x, y = torch.rand(40, 4), torch.arange(40) % 2
>>> dknn = DkNN(model, ["relu1", "logits"], k=5, backend="torch").fit(x, y).calibrate(x, y)
>>> res = dknn.predict(torch.rand(3, 4))
>>> res.p_values.shape, res.layer_counts.shape, int(res.layer_counts.sum())
(torch.Size([3, 2]), torch.Size([2, 3, 2]), 30)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from snnl import _checks
from snnl.distances import check_distance
from snnl.taps import Layers, capture, split_logits

__all__ = [
    "DkNN",
    "DkNNResult",
    "AgreementReport",
    "nonconformity",
    "conformal_p_values",
    "neighbour_counts",
    "choose_k",
    "calibration_size",
    "PAPER_TRAIN",
    "PAPER_K",
    "PAPER_CALIBRATION",
]

#: Papernot & McDaniel 2018 (FIELD_NOTES sec. 2): k = 75 neighbours and 750 calibration
#: points (the first 750 test points) for the 60,000 MNIST training points.
PAPER_TRAIN = 60_000
PAPER_K = 75
PAPER_CALIBRATION = 750

_BACKENDS = ("faiss", "torch")
_STORE_DTYPES = (torch.float32, torch.float16)


# --------------------------------------------------------------------------- functions


def _scaled(paper_value: int, n_train: int, paper_train: int) -> int:
    """``paper_value * n_train / paper_train`` rounded half up (not to even)."""
    if n_train < 1 or paper_train < 1 or paper_value < 1:
        raise ValueError(
            f"the scaling rule needs positive sizes, got n_train {n_train}, paper value "
            f"{paper_value} for paper_train {paper_train}"
        )
    return int(math.floor(paper_value * n_train / paper_train + 0.5))


def choose_k(n_train: int, paper_k: int = PAPER_K, paper_train: int = PAPER_TRAIN) -> int:
    """The DkNN paper's k scaled to the training-set size: ``round(75 * n_train / 60,000)``
    (half up), at least 1 (Papernot & McDaniel 2018: k = 75 on 60,000 MNIST points).

    >>> choose_k(60000), choose_k(4000), choose_k(1437), choose_k(10)
    (75, 5, 2, 1)
    """
    return max(1, _scaled(paper_k, n_train, paper_train))


def calibration_size(
    n_train: int,
    n_test: int,
    num_classes: int,
    paper_calibration: int = PAPER_CALIBRATION,
    paper_train: int = PAPER_TRAIN,
) -> int:
    """The DkNN paper's calibration size scaled to the training-set size:
    ``round(750 * n_train / 60,000)`` (half up), at least ``num_classes`` (one point
    per class on average) and at most ``n_test // 2`` (half the test set stays clean).

    >>> calibration_size(60000, 10000, 10), calibration_size(4000, 1000, 10)
    (750, 50)
    >>> calibration_size(200, 120, 10), calibration_size(60000, 1000, 10)
    (10, 500)
    """
    if n_test < 2:
        raise ValueError(f"need at least 2 test points to calibrate and evaluate, got {n_test}")
    n_cal = max(num_classes, _scaled(paper_calibration, n_train, paper_train))
    return max(1, min(n_cal, n_test // 2))


def neighbour_counts(neighbour_labels: Tensor, num_classes: int) -> Tensor:
    """Per-class counts of neighbour labels: (N, k) int (any integer dtype) -> (N, C) int64.

    >>> neighbour_counts(torch.tensor([[0, 2, 2], [1, 1, 1]], dtype=torch.uint8), 3).tolist()
    [[1, 0, 2], [0, 3, 0]]
    """
    _checks.check_tensor("neighbour_labels", neighbour_labels, min_dim=2)
    _checks.check_labels(neighbour_labels.flatten(), name="neighbour_labels", non_negative=True)
    num_classes = _checks.check_int("num_classes", num_classes, low=1)
    n = neighbour_labels.shape[0]
    counts = torch.zeros(n, num_classes, dtype=torch.int64, device=neighbour_labels.device)
    return counts.scatter_add_(1, neighbour_labels.long(), torch.ones_like(neighbour_labels).long())


def nonconformity(layer_counts: Tensor, k: int) -> Tensor:
    """alpha(x, j) = sum over layers of (k - count_l(x, j)): (L, N, C) -> (N, C).

    >>> nonconformity(torch.tensor([[[3, 0]], [[2, 1]]]), k=3).tolist()
    [[1, 5]]
    """
    return (k - layer_counts).sum(dim=0)


def conformal_p_values(alpha: Tensor, calibration_scores: Tensor) -> Tensor:
    """p_j(z) = |{a in A : a >= alpha(z, j)}| / |A|, vectorised: (N, C), (M,) -> (N, C).

    >>> A = torch.tensor([0, 0, 1, 3])
    >>> conformal_p_values(torch.tensor([[0, 1, 2, 3, 4]]), A).tolist()
    [[1.0, 0.5, 0.25, 0.25, 0.0]]
    """
    scores = calibration_scores.flatten()
    if scores.numel() == 0:
        raise ValueError("conformal_p_values needs at least one calibration score")
    a_sorted, _ = torch.sort(scores.to(alpha.dtype))
    below = torch.searchsorted(a_sorted, alpha.contiguous(), side="left")  # |{a < alpha}|
    return (scores.numel() - below).double() / scores.numel()


# --------------------------------------------------------------------------- results


@dataclass
class DkNNResult:
    """DkNN output for N inputs, C classes and L layers.

    labels: (N,) int64, argmax_j p_j. p_values: (N, C) float64.
    credibility: (N,) max_j p_j. confidence: (N,) 1 - second largest p_j.
    layer_counts: (L, N, C) int64 neighbour label counts per layer.
    neighbour_agreement: (L, N) int64, neighbours of the predicted class.
    layers: the L layer names.
    """

    labels: Tensor
    p_values: Tensor
    credibility: Tensor
    confidence: Tensor
    layer_counts: Tensor
    neighbour_agreement: Tensor
    layers: tuple[str, ...]


@dataclass
class AgreementReport:
    """Neighbour agreement of test points set against the calibration data.

    calibration_mean: (L,) mean agreement of calibration points with their
    DkNN-predicted class. mean: (L,) the same for the test points.
    fraction_at_or_below: (L, N) fraction of calibration points whose
    agreement at that layer is <= the test point's (small = unusual, an
    outlier signal). mean_fraction: (N,) its mean over layers.
    """

    calibration_mean: Tensor
    mean: Tensor
    fraction_at_or_below: Tensor
    mean_fraction: Tensor
    layers: tuple[str, ...]


# --------------------------------------------------------------------------- indexes


class _FaissIndex:
    """Exact faiss index (flat, or fp16 scalar-quantised) over one layer."""

    def __init__(self, data: Tensor, inner_product: bool, fp16: bool) -> None:
        import faiss

        d = data.shape[1]
        metric = faiss.METRIC_INNER_PRODUCT if inner_product else faiss.METRIC_L2
        if fp16:
            self.index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, metric)
        elif inner_product:
            self.index = faiss.IndexFlatIP(d)
        else:
            self.index = faiss.IndexFlatL2(d)
        self.index.add(_as_f32(data))

    def search(self, queries: Tensor, k: int) -> Tensor:
        _, idx = self.index.search(_as_f32(queries), k)
        return torch.from_numpy(idx)

    @property
    def nbytes(self) -> int:
        return int(self.index.ntotal * self.index.code_size)


class _TorchIndex:
    """Exact blocked search: (q_block x t_block) distance tiles, running top-k merge.

    Memory per tile is ``query_block * train_block * 4`` bytes (64 MB by
    default) whatever the training set size.
    """

    def __init__(
        self,
        data: Tensor,
        inner_product: bool,
        store_dtype: torch.dtype,
        query_block: int = 1024,
        train_block: int = 16384,
    ) -> None:
        self.data = data.to(store_dtype).contiguous()
        self.inner_product = inner_product
        self.query_block, self.train_block = query_block, train_block
        # squared norms of the stored (possibly rounded) vectors; |q|^2 is
        # constant per query and does not change the ranking
        self.sq_norms = None if inner_product else self.data.float().pow(2).sum(1)

    def search(self, queries: Tensor, k: int) -> Tensor:
        q_all = queries.to(self.data.device, torch.float32)
        out = torch.empty(q_all.shape[0], k, dtype=torch.int64, device=q_all.device)
        for qs in range(0, q_all.shape[0], self.query_block):
            q = q_all[qs : qs + self.query_block]
            best_d: Tensor | None = None
            best_i: Tensor | None = None
            for ts in range(0, self.data.shape[0], self.train_block):
                t = self.data[ts : ts + self.train_block].float()
                if self.inner_product:
                    d = -(q @ t.T)
                else:
                    assert self.sq_norms is not None
                    d = self.sq_norms[ts : ts + t.shape[0]] - 2.0 * (q @ t.T)
                dv, di = d.topk(min(k, t.shape[0]), dim=1, largest=False)
                di = di + ts
                if best_d is not None and best_i is not None:
                    dv, order = torch.cat([best_d, dv], 1).topk(k, dim=1, largest=False)
                    di = torch.cat([best_i, di], 1).gather(1, order)
                best_d, best_i = dv, di
            assert best_i is not None
            out[qs : qs + q.shape[0]] = best_i
        return out

    @property
    def nbytes(self) -> int:
        n = self.data.numel() * self.data.element_size()
        if self.sq_norms is not None:
            n += self.sq_norms.numel() * self.sq_norms.element_size()
        return int(n)


def _as_f32(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)


# --------------------------------------------------------------------------- DkNN


class _LayerTransform:
    """Per-layer projection fitted on training data: optional PCA, then cosine centring."""

    def __init__(self, train: Tensor, pca_components: int | None, cosine: bool) -> None:
        self.pca_mean: Tensor | None = None
        self.pca_matrix: Tensor | None = None
        if pca_components is not None and train.shape[1] > pca_components:
            if pca_components > train.shape[0]:
                raise ValueError(
                    f"pca_components={pca_components} exceeds the number of training "
                    f"points ({train.shape[0]})"
                )
            from sklearn.decomposition import PCA

            pca = PCA(n_components=pca_components, random_state=0).fit(_as_f32(train))
            self.pca_mean = torch.as_tensor(pca.mean_, dtype=torch.float32)
            self.pca_matrix = torch.as_tensor(pca.components_.T, dtype=torch.float32)
        self.center: Tensor | None = None
        if cosine:
            self.center = self._project(train).mean(0)

    def _project(self, x: Tensor) -> Tensor:
        x = x.float()
        if self.pca_matrix is not None and self.pca_mean is not None:
            x = (x - self.pca_mean.to(x.device)) @ self.pca_matrix.to(x.device)
        return x

    def __call__(self, x: Tensor) -> Tensor:
        x = self._project(x)
        if self.center is not None:
            x = x - self.center.to(x.device)
            x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return x


class DkNN:
    """Deep k-Nearest Neighbors over named layers of ``model``, conformally calibrated.

    Args:
        model: the trained network (its train/eval mode is restored after each use).
        layers: module names as in ``model.named_modules()``, or ``"hidden"``
            (see :func:`snnl.taps.resolve_layers`); ``"logits"`` may name the
            model output when no module is called so (the paper used every
            ReLU output and the logits).
        k: neighbours per layer (paper: 75).
        metric: ``"euclidean"`` or ``"cosine"`` (centre with the training mean,
            L2-normalise, inner-product search; the paper's setting).
        backend: ``"faiss"`` (exact flat index) or ``"torch"`` (exact, blocked).
        store_dtype: ``torch.float32`` or ``torch.float16`` for the stored
            training representations (faiss: ``IndexScalarQuantizer`` QT_fp16;
            torch: float16 storage, float32 arithmetic per block).
        pca_components: if set, a PCA per layer fitted on the training
            representations projects every layer wider than this.
        batch_size: forward-pass batch size for capturing representations;
            predictions are processed in chunks of ``8 * batch_size`` inputs.

    Shapes: fit x (N_train, *input_shape), y (N_train,) of any integer dtype; predict x (N, ...)
    -> :class:`DkNNResult`. Inputs may also be an iterable of (x, y) batches
    (e.g. a DataLoader; predict uses the first element of each batch).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Layers,
        *,
        k: int = 75,
        metric: str = "euclidean",
        backend: str = "faiss",
        store_dtype: torch.dtype = torch.float32,
        pca_components: int | None = None,
        batch_size: int = 512,
    ) -> None:
        k = _checks.check_int("k", k, low=1)
        metric = check_distance(metric, "metric").value
        backend = _checks.check_choice("backend", backend, _BACKENDS)
        if store_dtype not in _STORE_DTYPES:
            raise ValueError(
                f"store_dtype must be torch.float32 or torch.float16, got {store_dtype}"
            )
        if pca_components is not None:
            pca_components = _checks.check_int("pca_components", pca_components, low=1)
        batch_size = _checks.check_int("batch_size", batch_size, low=1)
        self.model = model
        _, self.layers = split_logits(model, layers)  # validates names
        self.k = k
        self.metric = metric
        self.backend = backend
        self.store_dtype = store_dtype
        self.pca_components = pca_components
        self.batch_size = batch_size
        self.num_classes: int | None = None
        self._train_labels: Tensor | None = None
        self._transforms: dict[str, _LayerTransform] = {}
        self._indexes: dict[str, _FaissIndex | _TorchIndex] = {}
        self._scores: Tensor | None = None  # sorted calibration scores A
        self._cal_agreement: Tensor | None = None  # (L, M) sorted per layer

    # ------------------------------------------------------------------ data plumbing

    def _batches(self, x: Any, y: Any, need_labels: bool) -> Iterator[tuple[Tensor, Tensor | None]]:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if isinstance(x, Tensor):
            yield x, (None if y is None else torch.as_tensor(y))
            return
        if y is not None:
            raise ValueError("pass labels inside the batches when x is an iterable of batches")
        if not isinstance(x, Iterable):
            raise TypeError(f"expected a Tensor or an iterable of (x, y) batches, got {type(x)}")
        for batch in x:
            if isinstance(batch, Tensor):
                if need_labels:
                    raise ValueError("batches must be (x, y) pairs when labels are needed")
                yield batch, None
            else:
                xb = batch[0]
                yb = torch.as_tensor(batch[1]) if need_labels else None
                yield xb, yb

    def _check_inputs(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"inputs must be Tensors, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[0] == 0:
            raise ValueError(f"inputs must be a non-empty batch (N, ...), got {tuple(x.shape)}")
        if x.is_floating_point() and torch.isnan(x).any():
            raise ValueError("inputs contain NaN")

    def _check_labels(self, y: Tensor | None, n: int) -> Tensor:
        """Labels of any integer dtype, one per input, as int64 on the CPU."""
        if y is None:
            raise ValueError("labels are required")
        return _checks.check_labels(y, n, device="cpu", non_negative=True)

    def _representations(
        self, x: Any, y: Any, need_labels: bool
    ) -> tuple[dict[str, Tensor], Tensor | None]:
        chunks: dict[str, list[Tensor]] = {n: [] for n in self.layers}
        labels: list[Tensor] = []
        for xb, yb in self._batches(x, y, need_labels):
            self._check_inputs(xb)
            if need_labels:
                labels.append(self._check_labels(yb, xb.shape[0]))
            reps = capture(self.model, xb, self.layers, batch_size=self.batch_size)
            for n in self.layers:
                if not torch.isfinite(reps[n]).all():
                    raise ValueError(f"layer {n!r} produced non-finite activations")
                chunks[n].append(reps[n])
        if not labels and need_labels:
            raise ValueError("no data: the iterable yielded no batches")
        if not any(chunks.values()):
            raise ValueError("no data: the iterable yielded no batches")
        reps = {n: torch.cat(c) for n, c in chunks.items()}
        return reps, (torch.cat(labels) if need_labels else None)

    # ------------------------------------------------------------------ fitting

    def fit(self, x: Any, y: Any = None, *, num_classes: int | None = None) -> DkNN:
        """Capture and index the training representations of every layer.

        ``num_classes`` defaults to ``max(y) + 1``. Raises ``ValueError`` when
        there are fewer than k training points (missing neighbours are never
        counted as a class).
        """
        reps, labels = self._representations(x, y, need_labels=True)
        assert labels is not None
        n = labels.shape[0]
        if n < self.k:
            raise ValueError(
                f"k={self.k} neighbours requested but the training set has only {n} points"
            )
        if num_classes is not None:
            num_classes = _checks.check_int("num_classes", num_classes, low=1)
        c = int(labels.max()) + 1 if num_classes is None else num_classes
        if c <= int(labels.max()):
            raise ValueError(f"num_classes={c} but training labels go up to {int(labels.max())}")
        cosine = self.metric == "cosine"
        transforms, indexes = {}, {}
        for name in self.layers:
            t = _LayerTransform(reps[name], self.pca_components, cosine)
            z = t(reps[name])
            fp16 = self.store_dtype == torch.float16
            if self.backend == "faiss":
                indexes[name] = _FaissIndex(z, cosine, fp16)
            else:
                indexes[name] = _TorchIndex(z, cosine, self.store_dtype)
            transforms[name] = t
            del reps[name]
        self._transforms, self._indexes = transforms, indexes
        self._train_labels, self.num_classes = labels, c
        self._scores = self._cal_agreement = None
        return self

    def _require_fit(self) -> None:
        if self._train_labels is None:
            raise RuntimeError("DkNN is not fitted: call fit(x_train, y_train) first")

    def _counts(self, reps: dict[str, Tensor]) -> Tensor:
        """Neighbour label counts (L, N, C) for captured representations."""
        assert self._train_labels is not None and self.num_classes is not None
        out = []
        for name in self.layers:
            idx = self._indexes[name].search(self._transforms[name](reps[name]), self.k)
            if (idx < 0).any():  # never expected: fit guarantees k <= N_train
                raise RuntimeError(f"layer {name!r}: the index returned missing neighbours")
            out.append(neighbour_counts(self._train_labels[idx.cpu()], self.num_classes))
        return torch.stack(out)

    def calibrate(self, x: Any, y: Any = None) -> DkNN:
        """Compute the calibration scores A = {alpha(x, y_true)} (all kept, zeros too)."""
        self._require_fit()
        assert self.num_classes is not None
        reps, labels = self._representations(x, y, need_labels=True)
        assert labels is not None
        if int(labels.max()) >= self.num_classes:
            raise ValueError(
                f"calibration label {int(labels.max())} is outside the "
                f"{self.num_classes} classes seen at fit time"
            )
        counts = self._counts(reps)  # (L, M, C)
        alpha = nonconformity(counts, self.k)  # (M, C)
        scores = alpha.gather(1, labels[:, None]).squeeze(1)
        self._scores, _ = torch.sort(scores)
        # agreement of calibration points with their own DkNN prediction
        pred = conformal_p_values(alpha, self._scores).argmax(1)
        agree = counts.gather(2, pred[None, :, None].expand(len(self.layers), -1, 1)).squeeze(2)
        self._cal_agreement, _ = torch.sort(agree, dim=1)
        return self

    @property
    def calibration_scores(self) -> Tensor:
        """The sorted calibration nonconformity scores A, shape (M,)."""
        if self._scores is None:
            raise RuntimeError("DkNN is not calibrated: call calibrate(x_cal, y_cal) first")
        return self._scores

    # ------------------------------------------------------------------ prediction

    def predict(self, x: Any) -> DkNNResult:
        """Conformal DkNN prediction for inputs ``x`` (Tensor or iterable of batches)."""
        self._require_fit()
        scores = self.calibration_scores
        chunk = 8 * self.batch_size
        counts_parts: list[Tensor] = []
        for xb, _ in self._batches(x, None, need_labels=False):
            self._check_inputs(xb)
            for s in range(0, xb.shape[0], chunk):
                reps, _ = self._representations(xb[s : s + chunk], None, need_labels=False)
                counts_parts.append(self._counts(reps))
        if not counts_parts:
            raise ValueError("no data to predict")
        counts = torch.cat(counts_parts, dim=1)  # (L, N, C)
        alpha = nonconformity(counts, self.k)  # (N, C)
        p = conformal_p_values(alpha, scores)  # (N, C)
        labels = p.argmax(dim=1)
        if p.shape[1] >= 2:
            top2 = p.topk(2, dim=1).values
            credibility, second = top2[:, 0], top2[:, 1]
        else:
            credibility, second = p[:, 0], torch.zeros_like(p[:, 0])
        agreement = counts.gather(2, labels[None, :, None].expand(len(self.layers), -1, 1))
        return DkNNResult(
            labels=labels,
            p_values=p,
            credibility=credibility,
            confidence=1.0 - second,
            layer_counts=counts,
            neighbour_agreement=agreement.squeeze(2),
            layers=self.layers,
        )

    def compare_agreement(self, result: DkNNResult) -> AgreementReport:
        """Set a result's neighbour agreement against the calibration set's.

        fraction_at_or_below[l, n] = |{m : agree_cal[l, m] <= agree[l, n]}| / M,
        where agree_cal is each calibration point's agreement with its own
        DkNN prediction. Outliers have fewer neighbours of their predicted
        class than usual, so small fractions flag them.
        """
        if self._cal_agreement is None:
            raise RuntimeError("DkNN is not calibrated: call calibrate(x_cal, y_cal) first")
        if result.layers != self.layers:
            raise ValueError(f"result layers {result.layers} differ from {self.layers}")
        cal = self._cal_agreement
        agree = result.neighbour_agreement.to(cal.dtype).contiguous()
        frac = torch.searchsorted(cal, agree, side="right").double() / cal.shape[1]
        return AgreementReport(
            calibration_mean=cal.double().mean(1),
            mean=agree.double().mean(1),
            fraction_at_or_below=frac,
            mean_fraction=frac.mean(0),
            layers=self.layers,
        )

    def memory_report(self) -> dict[str, int]:
        """Bytes each layer's search index holds (stored vectors, plus norms for torch)."""
        self._require_fit()
        return {name: self._indexes[name].nbytes for name in self.layers}

    def __repr__(self) -> str:
        return (
            f"DkNN(layers={self.layers}, k={self.k}, metric={self.metric!r}, "
            f"backend={self.backend!r}, store_dtype={self.store_dtype}, "
            f"pca_components={self.pca_components})"
        )
