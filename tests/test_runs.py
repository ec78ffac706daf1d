"""snnl.runs: the one batching function, the run-folder lifecycle, the run cache."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from snnl.runs import (
    CHECKPOINT,
    CONFIG,
    RESULTS,
    DamagedRunError,
    EpochTrainer,
    NonFiniteLoss,
    RunExistsError,
    RunMismatchError,
    epoch_batches,
    prepare_folder,
    read_json,
    reusable,
    run_epochs,
    train_or_reuse,
)

# ----------------------------------------------------------------------------- batches


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 700),
    batch_size=st.integers(1, 300),
    seed=st.integers(0, 10),
    epoch=st.integers(0, 5),
)
def test_every_point_exactly_once_per_epoch(n, batch_size, seed, epoch):
    batches = epoch_batches(n, batch_size, seed, epoch)
    seen = torch.cat(batches).tolist()
    assert sorted(seen) == list(range(n))  # each index once: no repeat, none skipped
    sizes = [len(b) for b in batches]
    # consecutive slices of batch_size; only a lone last point joins the one before it
    full, rest = divmod(n, batch_size)
    expected = [batch_size] * full + ([rest] if rest else [])
    if len(expected) > 1 and expected[-1] == 1:
        expected = expected[:-2] + [expected[-2] + 1]
    assert sizes == expected


def test_batches_follow_the_seeded_order():
    """The order is randperm of the seed * 100_003 + epoch generator (as runs always had)."""
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3 * 100_003 + 2))
    batches = epoch_batches(10, 4, seed=3, epoch=2)
    assert [b.tolist() for b in batches] == [order[:4].tolist(), order[4:8].tolist(),
                                             order[8:].tolist()]  # fmt: skip
    merged = epoch_batches(9, 4, seed=3, epoch=2)  # 4, 4, 1: the lone point joins the second
    order9 = torch.randperm(9, generator=torch.Generator().manual_seed(3 * 100_003 + 2))
    assert [b.tolist() for b in merged] == [order9[:4].tolist(), order9[4:].tolist()]


def test_two_batches_with_a_lone_point_merge():
    """Issue 18: 129 points in batches of 128 raised IndexError (pop before assign)."""
    batches = epoch_batches(129, 128, seed=0, epoch=0)
    assert [len(b) for b in batches] == [129]


def test_three_batches_with_a_lone_point_use_every_point_once():
    """Issue 18: 129 points in batches of 64 trained one batch twice and skipped another."""
    batches = epoch_batches(129, 64, seed=0, epoch=0)
    assert [len(b) for b in batches] == [64, 65]
    assert len(set(torch.cat(batches).tolist())) == 129


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_batches_reject_bad_sizes(bad):
    with pytest.raises(ValueError, match="batch_size"):
        epoch_batches(10, bad, 0, 0)
    with pytest.raises(ValueError, match="n must"):
        epoch_batches(bad, 4, 0, 0)


# ----------------------------------------------------------------------------- the loop


@dataclass
class Count:
    epochs: int = 3
    seed: int = 0
    n: int = 7
    batch_size: int = 3
    diverge_at: int | None = None


class Counter(EpochTrainer):
    """A toy trainer: its state is the running sum of the indices it has seen."""

    checkpoint_keys = frozenset({"total"})

    def __init__(self, config: Count, on_epoch=None) -> None:
        self.config, self.total, self.on_epoch = config, 0, on_epoch

    def begin(self, initial):
        return initial if initial is not None else {"start": 0.5}

    def state_dict(self):
        return {"total": self.total}

    def load_state_dict(self, state):
        self.total = int(state["total"])

    def train_epoch(self, epoch):
        if self.on_epoch is not None:
            self.on_epoch(epoch)
        if epoch == self.config.diverge_at:
            raise NonFiniteLoss(f"nan at epoch {epoch + 1}")
        c = self.config
        for b in epoch_batches(c.n, c.batch_size, c.seed, epoch):
            self.total += int(b.sum()) * (epoch + 1)
        return {"total": self.total}


def _run(config: Count, out: Path, **kw):
    on_epoch = kw.pop("on_epoch", None)
    return run_epochs(config, out, lambda: Counter(config, on_epoch), **kw)


def _expected_totals(epochs: int, n: int = 7) -> list[int]:
    s = n * (n - 1) // 2
    return [s * sum(range(1, e + 2)) for e in range(epochs)]


def test_loop_writes_the_run_folder(tmp_path):
    res = _run(Count(), tmp_path / "r")
    assert [r["total"] for r in res["history"]] == _expected_totals(3)
    assert read_json(tmp_path / "r" / CONFIG, "c") == {
        "epochs": 3, "seed": 0, "n": 7, "batch_size": 3, "diverge_at": None
    }  # fmt: skip
    assert read_json(tmp_path / "r" / RESULTS, "r") == res
    assert res["health"] == {"verdict": "ok", "reasons": []} and res["initial"] == {"start": 0.5}
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == res["history"]


def test_loop_resumes_after_a_kill_bit_identically(tmp_path):
    class Kill(Exception):
        pass

    def kill(epoch):
        if epoch == 2:
            raise Kill

    with pytest.raises(Kill):
        _run(Count(), tmp_path / "r", on_epoch=kill)
    assert not (tmp_path / "r" / RESULTS).exists()
    with pytest.raises(RunExistsError, match="--resume"):
        _run(Count(), tmp_path / "r")
    resumed = _run(Count(), tmp_path / "r", resume=True)
    whole = _run(Count(), tmp_path / "w")
    assert resumed["history"] == whole["history"]
    assert (tmp_path / "r" / "metrics.jsonl").read_bytes() == (
        tmp_path / "w" / "metrics.jsonl"
    ).read_bytes()


def test_loop_extends_a_finished_run_and_refuses_to_shorten_it(tmp_path):
    _run(Count(epochs=2), tmp_path / "r")
    with pytest.raises(RunExistsError, match="finished"):
        _run(Count(epochs=4), tmp_path / "r")  # without --resume
    with pytest.raises(RunExistsError, match="larger --epochs"):
        _run(Count(epochs=2), tmp_path / "r", resume=True)
    with pytest.raises(RunMismatchError, match="cannot be shortened"):
        _run(Count(epochs=1), tmp_path / "r", resume=True)
    with pytest.raises(RunMismatchError, match="batch_size"):
        _run(Count(epochs=4, batch_size=2), tmp_path / "r", resume=True)
    res = _run(Count(epochs=4), tmp_path / "r", resume=True)
    assert [r["total"] for r in res["history"]] == _expected_totals(4)
    assert read_json(tmp_path / "r" / CONFIG, "c")["epochs"] == 4
    _run(Count(epochs=4), tmp_path / "w")
    for name in ("metrics.jsonl", CONFIG):
        assert (tmp_path / "r" / name).read_bytes() == (tmp_path / "w" / name).read_bytes()


def test_loop_stops_at_a_non_finite_loss(tmp_path):
    res = _run(Count(epochs=4, diverge_at=2), tmp_path / "r")
    assert len(res["history"]) == 2
    assert res["health"] == {"verdict": "diverged", "reasons": ["nan at epoch 3"]}


def test_resume_of_a_missing_folder_names_it(tmp_path):
    """Issue 18: --resume on a folder that does not exist silently started fresh."""
    missing = tmp_path / "typo"
    with pytest.raises(FileNotFoundError, match="typo.*does not exist"):
        _run(Count(), missing, resume=True)
    assert not missing.exists()


def test_damaged_checkpoint_is_named(tmp_path):
    def interrupt(epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(Count(), tmp_path / "r", on_epoch=interrupt)
    (tmp_path / "r" / CHECKPOINT).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DamagedRunError, match=CHECKPOINT):
        _run(Count(), tmp_path / "r", resume=True)
    assert (
        _run(Count(), tmp_path / "r", force=True)["history"][-1]["total"] == _expected_totals(3)[-1]
    )


def test_failed_start_leaves_no_folder(tmp_path):
    def broken():
        raise ValueError("no data")

    with pytest.raises(ValueError, match="no data"):
        run_epochs(Count(), tmp_path / "new", broken)
    assert not (tmp_path / "new").exists()


def test_prepare_refuses_a_file_and_a_checkpoint_without_config(tmp_path):
    (tmp_path / CHECKPOINT).write_bytes(b"x")
    with pytest.raises(DamagedRunError, match=CONFIG):
        prepare_folder(tmp_path, {"epochs": 1}, resume=True, force=False)
    assert prepare_folder(tmp_path, {"epochs": 1}, resume=True, force=True) == "fresh"
    assert (tmp_path / CHECKPOINT).exists()  # deleted only once a new run has started


def test_a_failed_forced_start_leaves_the_folder_byte_identical(tmp_path):
    """Issue 18: check every input before touching the folder (--force replaced a
    finished run's files before the new run could start)."""
    _run(Count(), tmp_path / "r")
    files = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}

    def broken():
        raise ValueError("no data")

    for resume in (False, True):
        with pytest.raises(ValueError, match="no data"):
            run_epochs(Count(batch_size=2), tmp_path / "r", broken, force=True, resume=resume)
        assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == files
    forced = _run(Count(batch_size=2), tmp_path / "r", force=True)
    assert read_json(tmp_path / "r" / RESULTS, "r") == forced
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == sorted(files)


# ----------------------------------------------------------------------------- the cache


def _trainer(calls):
    def train(config, folder, *, resume, force):
        calls.append((config.epochs, resume, force))
        return _run(config, folder, resume=resume, force=force)

    return train


def test_train_or_reuse_trains_reuses_extends_and_refuses(tmp_path):
    calls: list = []
    folder = tmp_path / "runs" / "a"
    logs: list[str] = []
    first = train_or_reuse(folder, Count(), _trainer(calls), log=logs.append)
    assert calls == [(3, False, False)] and logs == ["training a"]
    again = train_or_reuse(folder, Count(), _trainer(calls))
    assert again == first and len(calls) == 1  # reused
    with pytest.raises(RunMismatchError, match="batch_size.*--force"):
        train_or_reuse(folder, Count(batch_size=2), _trainer(calls))
    longer = train_or_reuse(folder, Count(epochs=5), _trainer(calls))  # extended
    assert calls[-1] == (5, True, False)
    assert [r["total"] for r in longer["history"]] == _expected_totals(5)
    retrained = train_or_reuse(folder, Count(batch_size=2), _trainer(calls), force=True)
    assert calls[-1] == (3, False, True) and retrained["config"]["batch_size"] == 2


def test_damaged_results_is_named_and_force_clears_it(tmp_path):
    """Issue 18: a damaged results.json gave an error without the file name, and --force
    did not clear it."""
    calls: list = []
    folder = tmp_path / "a"
    train_or_reuse(folder, Count(), _trainer(calls))
    (folder / RESULTS).write_text('{"config": ')
    with pytest.raises(DamagedRunError, match=str(folder / RESULTS)):
        train_or_reuse(folder, Count(), _trainer(calls))
    res = train_or_reuse(folder, Count(), _trainer(calls), force=True)
    assert calls[-1] == (3, False, True) and read_json(folder / RESULTS, "r") == res


def test_reusable_with_a_custom_identity(tmp_path):
    calls: list = []
    train_or_reuse(tmp_path / "a", Count(), _trainer(calls))
    assert reusable(tmp_path / "a", Count(seed=5), same=lambda saved: True) is not None
    with pytest.raises(RunMismatchError, match="other inputs"):
        reusable(tmp_path / "a", Count(), same=lambda saved: False)
    assert reusable(tmp_path / "a", Count(), same=lambda saved: False, force=True) is None
