"""Training under ``torch.distributed`` (torchrun): rank helpers and the global-batch gather.

``torchrun --nproc_per_node=W -m snnl train ...`` trains with
DistributedDataParallel (DDP): gloo on CPU, nccl on CUDA (one GPU per process,
``LOCAL_RANK``). Each global batch is the single-process batch (same seeded
order, same size) split across ranks in rank order with :func:`torch.tensor_split`
(:func:`shard`: sizes differ by at most one).

Why the gradients equal those of one process on the concatenated batch B
(N = |B| = sum_r n_r, rank r holding B_r). One process minimises

    L(B) = CE_mean(B) - sum_r' alpha_r' * term_r'(h(B), y(B)).

Rank r computes the same terms on the *global* batch: every regularised layer's
features and the labels are gathered from all ranks in rank order with
:func:`all_gather_batch` (``torch.distributed.nn.functional.all_gather``, whose
backward sums, on rank r, the gradients that every rank's copy of the gathered
tensor received for the rows of B_r). The term is the same number on every rank,
so rank r receives W x dterm/dh(B_r). DDP then averages the parameter gradients
over the W ranks:

    (1/W) sum_r W dterm/dh(B_r) dh(B_r)/dtheta = dterm/dtheta,

the single-process gradient, with no extra factor. The cross-entropy is local:
rank r backpropagates CE_sum(B_r) * W / N, and DDP's average gives

    (1/W) sum_r (W / N) dCE_sum(B_r)/dtheta = d CE_mean(B)/dtheta.

Its value (for metrics and the non-finite check) is the global mean, one
all-reduce of the local sums, so every rank holds the same loss, the same
per-layer terms and (computed on the same gathered features) the same
temperatures. :func:`snnl.regularizers.regularized_loss` does all this when it
is given a DDP-wrapped model.

Outside a process group every helper is the identity of one process (rank 0 of 1).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "world_size",
    "rank",
    "is_main_process",
    "init_from_environment",
    "shutdown",
    "training_device",
    "shard",
    "batch_sizes",
    "all_gather_batch",
    "all_reduce_sum",
    "wrap_model",
    "run_on_main",
    "barrier",
]

_TORCHRUN = "start it with torchrun, e.g. `torchrun --nproc_per_node=2 -m snnl train ...`"


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size(group: dist.ProcessGroup | None = None) -> int:
    """Number of processes in ``group`` (the default group); 1 outside a process group.

    >>> world_size()
    1
    """
    return dist.get_world_size(group) if _active() else 1


def rank(group: dist.ProcessGroup | None = None) -> int:
    """This process's rank in ``group``; 0 outside a process group.

    >>> rank()
    0
    """
    return dist.get_rank(group) if _active() else 0


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the one that writes files."""
    return rank() == 0


def _env_int(name: str) -> int:
    raw = os.environ.get(name)
    if raw is None:
        raise ValueError(f"WORLD_SIZE is set above 1 but {name} is not: {_TORCHRUN}")
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def init_from_environment() -> bool:
    """Join the process group torchrun describes, when ``WORLD_SIZE`` > 1.

    Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (``env://``);
    the backend is nccl with one GPU per process (``LOCAL_RANK``) when CUDA is
    available, gloo on CPU otherwise. Returns True when this call created the
    group (the caller then calls :func:`shutdown`), False when ``WORLD_SIZE`` is
    unset or 1 (one process: nothing to do) or a group already exists.

    >>> import os
    >>> saved = os.environ.pop("WORLD_SIZE", None)
    >>> init_from_environment()  # one process: nothing to join
    False
    >>> if saved is not None:
    ...     os.environ["WORLD_SIZE"] = saved
    """
    if "WORLD_SIZE" not in os.environ:
        return False
    size = _env_int("WORLD_SIZE")
    if size <= 1 or _active():
        return False
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; train in one process")
    this_rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK")
    if not 0 <= this_rank < size:
        raise ValueError(f"RANK must be in [0, WORLD_SIZE={size}), got {this_rank}")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ValueError(f"WORLD_SIZE={size} but {name} is not set: {_TORCHRUN}")
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {local_rank} has no GPU ({torch.cuda.device_count()} visible): "
                "start at most one process per GPU"
            )
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, init_method="env://", rank=this_rank, world_size=size)
    return True


def shutdown() -> None:
    """Leave the default process group (no-op outside one)."""
    if _active():
        dist.destroy_process_group()


def training_device() -> torch.device:
    """The device this rank trains on: its GPU under nccl, else the CPU.

    >>> training_device()
    device(type='cpu')
    """
    if _active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard(batch: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """This rank's share of a global batch: ``torch.tensor_split(batch, W)[rank]``.

    Shares are contiguous and in rank order (concatenated they give ``batch``);
    their sizes differ by at most one. One process gets the whole batch.

    >>> shard(torch.arange(5))
    tensor([0, 1, 2, 3, 4])
    >>> [s.tolist() for s in torch.tensor_split(torch.arange(5), 2)]  # what 2 ranks get
    [[0, 1, 2], [3, 4]]
    """
    size = world_size(group)
    return batch if size == 1 else torch.tensor_split(batch, size)[rank(group)]


def batch_sizes(
    local_size: int, device: torch.device, group: dist.ProcessGroup | None = None
) -> list[int]:
    """Every rank's local batch size, in rank order (one small all-gather).

    >>> batch_sizes(7, torch.device("cpu"))
    [7]
    """
    size = world_size(group)
    if size == 1:
        return [int(local_size)]
    mine = torch.tensor([int(local_size)], dtype=torch.int64, device=device)
    parts = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(parts, mine, group=group)
    return [int(p) for p in torch.cat(parts).tolist()]


def all_gather_batch(
    tensor: Tensor,
    sizes: Sequence[int] | None = None,
    group: dist.ProcessGroup | None = None,
) -> Tensor:
    """Concatenate every rank's ``tensor`` (n_r, ...) along dim 0, in rank order, with gradient.

    .. math::
        \\mathrm{out} = [x_0; x_1; \\dots; x_{W-1}] \\in \\mathbb{R}^{(\\sum_r n_r) \\times \\dots}

    Uses ``torch.distributed.nn.functional.all_gather``: in the backward pass rank
    r receives the *sum over ranks* of the gradient each rank's ``out`` has for the
    rows of x_r (see the module docstring for why that, with DDP's average, is the
    single-process gradient). Local sizes may differ (``sizes``: every rank's n_r,
    from :func:`batch_sizes` if not given): shares are zero-padded to the largest
    and the padding is sliced off, so it gets no gradient. Every rank must call
    this with the same ``sizes`` and in the same order as the other ranks.

    Shapes: tensor (n_r, *rest) -> (sum_r n_r, *rest), same dtype and device.

    Example:
        >>> x = torch.ones(3, 2, requires_grad=True)
        >>> all_gather_batch(x).shape  # one process: the tensor itself
        torch.Size([3, 2])
    """
    size = world_size(group)
    if size == 1:
        return tensor
    if sizes is None:
        sizes = batch_sizes(tensor.shape[0], tensor.device, group)
    sizes = [int(s) for s in sizes]
    if len(sizes) != size or sizes[rank(group)] != tensor.shape[0]:
        raise ValueError(
            f"sizes must list the {size} ranks' batch sizes with this rank's "
            f"{tensor.shape[0]} at position {rank(group)}, got {sizes}"
        )
    longest = max(sizes)
    padded = tensor
    if tensor.shape[0] < longest:
        pad = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([tensor, pad])
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a funcol without gloo backward
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(padded, group=group if group is not None else dist.group.WORLD)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


def all_reduce_sum(value: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Sum of ``value`` over ranks (a new tensor, no gradient; ``value`` is left alone).

    >>> all_reduce_sum(torch.tensor([1.0, 2.0]))
    tensor([1., 2.])
    """
    out = value.detach().clone()
    if world_size(group) > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


def _has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def wrap_model(model: nn.Module) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel on this rank's device (as is in one process).

    The model is moved to :func:`training_device` first. BatchNorm layers become
    SyncBatchNorm on CUDA, so their statistics are those of the global batch; on
    CPU torch has no SyncBatchNorm, and per-rank statistics would make the
    gradients differ from one process's: a ValueError. Buffers are synchronised
    once, at wrapping, not at each forward (they stay equal on every rank: the
    only running statistics are synchronised ones).

    >>> net = nn.Linear(2, 2)
    >>> wrap_model(net) is net
    True
    """
    if world_size() == 1:
        return model
    device = training_device()
    if _has_batch_norm(model):
        if device.type != "cuda":
            raise ValueError(
                f"{type(model).__name__} has BatchNorm layers: under DDP on CPU their "
                "statistics would be per rank (torch's SyncBatchNorm runs only on GPUs), so "
                "the gradients would not be those of the global batch; train it in one "
                "process or on GPUs"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)


def run_on_main(task: Callable[[], bool]) -> bool:
    """Run ``task`` on rank 0 only and give its True/False to every rank.

    If ``task`` raises on rank 0, rank 0 re-raises it and every other rank raises a
    RuntimeError saying so (instead of waiting forever). Every rank must call this
    at the same point; ``task`` is ignored on the others. One process: ``task()``.

    >>> run_on_main(lambda: True)
    True
    """
    if world_size() == 1:
        return bool(task())
    flag = torch.tensor([-1], dtype=torch.int64, device=training_device())
    if rank() == 0:
        try:
            flag.fill_(int(bool(task())))
        finally:
            dist.broadcast(flag, src=0)  # -1 when task raised
    else:
        dist.broadcast(flag, src=0)
        if int(flag) < 0:
            raise RuntimeError(
                "rank 0 stopped before training (its error is on its standard error)"
            )
    return bool(int(flag))


def barrier() -> None:
    """Wait until every rank gets here (no-op in one process)."""
    if world_size() > 1:
        dist.barrier()
