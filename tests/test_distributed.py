"""DDP with a global-batch SNNL: 2 CPU processes (gloo) against one process on the same batch.

The 2-rank runs are torch.multiprocessing processes (forked, so that they start
at once) with a file:// rendezvous in a temporary folder (no network). Each rank
saves what it computed with torch.save; the test process compares it with one
process on the concatenated batch and with an independent float64 computation
(direct pairwise differences).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from snnl import distributed
from snnl.models import MLP
from snnl.regularizers import EntanglementRegularizer, SelectivityRegularizer, regularized_loss
from snnl.train import TrainConfig, train

WORLD = 2


def _entry(rank: int, init: str, target, args: tuple) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        target(rank, *args)
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path: Path, target, *args) -> None:
    """Run ``target(rank, *args)`` on 2 gloo ranks, forked (no second import of torch)."""
    import torch._dynamo  # noqa: F401  DDP's constructor imports it: once here, not per rank

    init = f"file://{tmp_path / 'rendezvous'}"
    mp.start_processes(
        _entry, args=(init, target, args), nprocs=WORLD, join=True, start_method="fork"
    )


# ----------------------------------------------------------------------------- one step

N = 37  # odd: shares of 19 and 18 rows, so the gather pads and slices
LAYERS = ("relu1", "relu2")
MODES = ("optimal", "learned", "reference")


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 6, generator=g)
    y = torch.arange(N) % 4
    return x, y


def _model() -> MLP:
    torch.manual_seed(1)
    return MLP((6,), 4, widths=(16, 8))


def _regs(model, mode: str) -> list:
    regs: list = [EntanglementRegularizer(model, alpha=0.5, temperature=3.0, temperature_mode=mode)]
    if mode == "optimal":  # composed with selectivity: class means over the global batch
        regs.append(SelectivityRegularizer(model, alpha=-0.3))
    return regs


def _step(net, plain, x, y, mode: str) -> dict:
    regs = _regs(plain, mode)
    out = regularized_loss(net, x, y, regs)
    out.total.backward()
    return {
        "loss": out.total.detach(),
        "ce": out.cross_entropy,
        "snnl": torch.stack([out.terms["snnl"][n] for n in LAYERS]),
        "used_t": torch.tensor([regs[0]._last_temperatures[n] for n in LAYERS]),
        "state_t": torch.tensor([regs[0].temperatures[n] for n in LAYERS]),
        "grads": {n: p.grad.detach().clone() for n, p in plain.named_parameters()},
    }


def _gather_check(rank: int) -> dict:
    """all_gather_batch of shares of 3 and 1 rows (and 2 and 0): values and W x gradient."""
    out = {}
    for sizes in ((3, 1), (2, 0)):
        rows = torch.arange(sum(sizes), dtype=torch.float32)[:, None] * torch.tensor([1.0, -2.0])
        start = sum(sizes[:rank])
        mine = rows[start : start + sizes[rank]].clone().requires_grad_(True)
        gathered = distributed.all_gather_batch(mine)
        weights = torch.arange(gathered.numel(), dtype=torch.float32).reshape(gathered.shape)
        (gathered * weights).sum().backward()
        out[sizes] = {"gathered": gathered.detach(), "grad": mine.grad.clone()}
    return out


def _step_worker(rank: int, folder: str) -> None:
    x, y = _batch()
    mine = distributed.shard(torch.arange(N))
    result: dict = {"gather": _gather_check(rank), "shard": mine}
    try:  # per-rank BatchNorm statistics would break the equality: refused on CPU
        distributed.wrap_model(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)))
    except ValueError as err:
        result["batchnorm_error"] = str(err)
    for mode in MODES:
        model = _model()
        ddp = distributed.wrap_model(model)
        result[mode] = _step(ddp, model, x[mine], y[mine], mode)
    torch.save(result, Path(folder) / f"rank{rank}.pt")


def _snnl64(h: torch.Tensor, y: torch.Tensor, t: float) -> torch.Tensor:
    """Eq. 1 in float64 from direct differences; anchors without a positive left out."""
    d = ((h[:, None, :] - h[None, :, :]) ** 2).sum(-1)
    eye = torch.eye(len(y), dtype=torch.bool)
    logits = (-d / t).masked_fill(eye, -math.inf)
    same = (y[:, None] == y[None, :]) & ~eye
    valid = same.any(1)
    num = torch.logsumexp(logits.masked_fill(~same, -math.inf), 1)
    return (torch.logsumexp(logits, 1) - num)[valid].mean()


def _selectivity64(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean unit class selectivity (max class mean vs the mean of the others), float64."""
    means = torch.stack([h[y == c].mean(0) for c in torch.unique(y)])
    top = means.max(0).values
    rest = (means.sum(0) - top) / (means.shape[0] - 1)
    return ((top - rest) / (top + rest + 1e-7)).mean()


def _reference64(mode: str, temps: list[float]) -> tuple[float, dict]:
    """Loss and parameter gradients of the whole batch in float64 at the given temperatures."""
    model = _model().double()
    x, y = _batch()
    acts: dict = {}
    hooks = [
        getattr(model, n).register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o))
        for n in LAYERS
    ]
    logits = model(x.double())
    for h in hooks:
        h.remove()
    loss = F.cross_entropy(logits, y)
    loss = loss - 0.5 * sum(_snnl64(acts[n], y, t) for n, t in zip(LAYERS, temps, strict=True))
    if mode == "optimal":
        loss = loss + 0.3 * torch.stack([_selectivity64(acts[n], y) for n in LAYERS]).mean()
    loss.backward()
    return float(loss.detach()), {n: p.grad for n, p in model.named_parameters()}


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    """Equal to ``rtol`` of the larger tensor's largest magnitude (gradients near 0 included)."""
    scale = max(float(a.abs().max()), float(b.abs().max()), 1e-30)
    return float((a.double() - b.double()).abs().max()) <= rtol * scale


@pytest.fixture(scope="module")
def step_results(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("ddp_step")
    _spawn(folder, _step_worker, str(folder))
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_shares_are_tensor_split_in_rank_order(step_results):
    shares = [r["shard"] for r in step_results]
    assert [len(s) for s in shares] == [19, 18]
    assert torch.equal(torch.cat(shares), torch.arange(N))


def test_batchnorm_is_refused_on_cpu(step_results):
    for res in step_results:
        assert "BatchNorm" in res["batchnorm_error"]
        assert "SyncBatchNorm runs only on GPUs" in res["batchnorm_error"]


def test_gather_concatenates_in_rank_order_and_sums_gradients(step_results):
    for sizes in ((3, 1), (2, 0)):
        rows = torch.arange(sum(sizes), dtype=torch.float32)[:, None] * torch.tensor([1.0, -2.0])
        weights = torch.arange(rows.numel(), dtype=torch.float32).reshape(rows.shape)
        for rank, res in enumerate(step_results):
            got = res["gather"][sizes]
            assert torch.equal(got["gathered"], rows)  # padding sliced off
            start = sum(sizes[:rank])
            # d/dx_r of the same loss on both ranks, summed by the gather's backward: W x
            assert torch.equal(got["grad"], WORLD * weights[start : start + sizes[rank]])


@pytest.mark.parametrize("mode", MODES)
def test_ddp_step_equals_one_process(step_results, mode):
    x, y = _batch()
    model = _model()
    single = _step(model, model, x, y, mode)
    for res in step_results:
        got = res[mode]
        assert torch.equal(got["used_t"], step_results[0][mode]["used_t"])  # same T on each rank
        assert torch.equal(got["state_t"], step_results[0][mode]["state_t"])
        assert torch.allclose(got["used_t"], single["used_t"], rtol=1e-6, atol=0)
        assert torch.allclose(got["state_t"], single["state_t"], rtol=1e-6, atol=0)
        assert torch.allclose(got["loss"], single["loss"], rtol=1e-5, atol=1e-7)
        assert torch.allclose(got["ce"], single["ce"], rtol=1e-6, atol=0)
        assert torch.allclose(got["snnl"], single["snnl"], rtol=1e-5, atol=0)
        for name, grad in single["grads"].items():
            assert _close(got["grads"][name], grad, 1e-5), (mode, name)


@pytest.mark.parametrize("mode", MODES)
def test_ddp_step_equals_float64_reference(step_results, mode):
    got = step_results[0][mode]
    loss64, grads64 = _reference64(mode, got["used_t"].tolist())
    assert math.isclose(float(got["loss"]), loss64, rel_tol=1e-5, abs_tol=1e-6)
    for name, grad in grads64.items():
        assert _close(got["grads"][name], grad, 1e-4), (mode, name)


def test_learned_temperature_step_uses_the_global_batch(step_results):
    # Adam's first step moves log T by lr * g / (|g| + 1e-8), g = dSNNL/dlogT of the global batch
    got = step_results[1]["learned"]
    assert torch.all(got["used_t"] == 3.0)
    x, y = _batch()
    model = _model().double()
    acts: dict = {}
    for n in LAYERS:
        getattr(model, n).register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o))
    with torch.no_grad():
        model(x.double())
    for i, n in enumerate(LAYERS):
        log_t = torch.tensor(math.log(3.0), dtype=torch.float64, requires_grad=True)
        _snnl64(acts[n], y, log_t.exp()).backward()
        g = float(log_t.grad)
        expected = math.exp(math.log(3.0) - 0.05 * g / (abs(g) + 1e-8))
        assert math.isclose(float(got["state_t"][i]), expected, rel_tol=1e-6)


def test_single_process_helpers_are_the_identity():
    x = torch.arange(6.0).reshape(3, 2)
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.all_gather_batch(x) is x
    assert torch.equal(distributed.all_reduce_sum(x), x)
    assert distributed.batch_sizes(3, x.device) == [3]
    assert torch.equal(distributed.shard(torch.arange(5)), torch.arange(5))
    assert distributed.run_on_main(lambda: False) is False
    net = torch.nn.Linear(2, 2)
    assert distributed.wrap_model(net) is net


def test_init_from_environment_needs_torchrun_variables(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_from_environment() is False
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="RANK is not.*torchrun"):
        distributed.init_from_environment()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ValueError, match="MASTER_ADDR is not set"):
        distributed.init_from_environment()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer"):
        distributed.init_from_environment()
    assert not dist.is_initialized()


# ----------------------------------------------------------------------------- train


def _train_config(**kw) -> TrainConfig:
    base = dict(
        epochs=2,
        batch_size=50,  # 300 points: 6 batches; shares of 25 rows
        alpha=0.1,
        temperature_mode="optimal",
        probe_size=60,
        model_kwargs={"widths": [24, 16]},
        limit_train=300,
        limit_test=100,
    )
    base.update(kw)
    return TrainConfig(**base)


class _Stop(Exception):
    pass


def _train_worker(rank: int, out: str, config: dict) -> None:
    def stop_in_epoch_two(epoch: int, step: int) -> None:
        if epoch == 1:  # both ranks stop at the same point, after epoch 1's checkpoint
            raise _Stop

    try:
        train(TrainConfig(**config), out, on_step=stop_in_epoch_two)
    except _Stop:
        pass


def _assert_same_history(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        _assert_close_json(g, w)


def _assert_close_json(g, w, where: str = "") -> None:
    if isinstance(w, dict):
        assert g.keys() == w.keys(), where
        for k in w:
            _assert_close_json(g[k], w[k], f"{where}.{k}")
    elif isinstance(w, float):
        assert math.isclose(g, w, rel_tol=1e-4, abs_tol=1e-6), (where, g, w)
    else:
        assert g == w, where


def test_two_rank_train_matches_one_process_and_resumes_in_one(tmp_path):
    config = _train_config()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = train(config, tmp_path / "one", progress=False)
    _spawn(tmp_path, _train_worker, str(tmp_path / "two"), config.__dict__)
    run = tmp_path / "two"
    assert sorted(p.name for p in run.iterdir()) == [
        ".snnl.lock",
        "checkpoint.pt",
        "config.json",
        "metrics.jsonl",
    ]
    first = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    _assert_same_history(first, want["history"][:1])  # epoch 1 on 2 ranks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed = train(config, run, resume=True, progress=False)
    _assert_same_history(resumed["history"], want["history"])  # epoch 2 in one process


@pytest.mark.slow
def test_torchrun_cli_trains_on_two_ranks(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this Python")
    with socket.socket() as s:  # a free loopback port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [
        "train",
        "--epochs=2",
        "--batch-size=50",
        "--alpha=0.1",
        "--limit-train=300",
        "--limit-test=100",
        "--seed=3",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    cmd += [f"--master_port={port}", "-m", "snnl", *args, "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("health      :") == 1  # only rank 0 prints
    from snnl.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*args, "--out", str(tmp_path / "one")]) == 0
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    _assert_same_history(two["history"], one["history"])
    shutil.rmtree(tmp_path / "two")
