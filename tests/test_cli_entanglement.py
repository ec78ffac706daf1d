"""``snnl entanglement``: undefined values, the plot file, huge features, and (below)
memory-mapped .npy files, the anchor estimate and --json.

Values are checked against ``reference.snnl_reference_mean`` (a float64 loop over anchors).
"""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest

from reference import snnl_reference_mean
from snnl.cli import main


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _npz(tmp_path, x, y, name="f.npz"):
    path = tmp_path / name
    np.savez(path, features=x, labels=y)
    return path


def _blobs(n=60, d=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = np.arange(n) % 3
    x[y == 1] += 1.5
    return x, y


def _value(out: str) -> float:
    return float(out.split("SNNL        :")[1].split()[0])


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("snnl entanglement: error: ") and "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------- undefined


@pytest.mark.parametrize("temperature", [[], ["--temperature", "1.0"]])
def test_undefined_snnl_is_an_error_not_zero(tmp_path, capsys, temperature):
    """No label occurs twice: the SNNL is undefined (it used to print 0.0000, which
    reads as perfectly separated)."""
    x, _ = _blobs(n=6)
    path = _npz(tmp_path, x, np.arange(6))
    assert main(["entanglement", str(path), *temperature]) == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert "undefined" in line and "no label occurs twice" in line
    assert captured.out == ""


# ----------------------------------------------------------------------------- plot


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p, "is a directory"),
        (lambda p: p / "missing" / "curve.png", "does not exist"),
        (lambda p: p / "curve.bmp", "unknown figure format 'bmp'.*png, pdf, svg, jpg, jpeg"),
        (lambda p: p / "curve", "unknown figure format ''"),
    ],
)
def test_bad_plot_path_fails_before_any_output(tmp_path, capsys, make, message):
    x, y = _blobs()
    path = _npz(tmp_path, x, y)
    assert (
        main(["entanglement", str(path), "--temperature", "2", "--plot", str(make(tmp_path))]) == 2
    )
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert re.search(message, line), line
    assert captured.out == ""


def test_unwritable_plot_folder_fails_before_any_output(tmp_path, capsys):
    x, y = _blobs()
    path = _npz(tmp_path, x, y)
    # /proc refuses new files even to root (permission bits would not)
    assert main(["entanglement", str(path), "--plot", "/proc/curve.png"]) == 2
    captured = capsys.readouterr()
    assert "not writable" in _one_error_line(captured.err)
    assert captured.out == ""


@pytest.mark.parametrize(
    ("suffix", "magic"),
    [(".png", b"\x89PNG\r\n\x1a\n"), (".jpg", b"\xff\xd8\xff"), (".JPEG", b"\xff\xd8\xff"),
     (".pdf", b"%PDF"), (".svg", b"<?xml")],
)  # fmt: skip
def test_plot_is_written_in_the_format_its_suffix_names(tmp_path, capsys, suffix, magic):
    x, y = _blobs()
    path = _npz(tmp_path, x, y)
    plot = tmp_path / f"curve{suffix}"
    assert main(["entanglement", str(path), "--temperature", "2", "--plot", str(plot)]) == 0
    assert plot.read_bytes()[: len(magic)] == magic
    out = capsys.readouterr().out
    assert f"plot        : {plot}" in out
    assert _value(out) == pytest.approx(snnl_reference_mean(x, y, 2.0), rel=1e-5)


# ----------------------------------------------------------------------------- huge features


def test_huge_float32_features_print_the_true_value_not_nan(tmp_path, capsys):
    """x * 1e20 in float32 printed 'SNNL: nan' with exit 0; at T = 1 the true value (~1e39)
    is beyond float32, so it is computed in float64."""
    x, y = _blobs(n=30, d=3)
    x = x * np.float32(1e20)
    path = _npz(tmp_path, x, y)
    assert main(["entanglement", str(path), "--temperature", "1"]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out.lower()
    assert _value(out) == pytest.approx(snnl_reference_mean(x, y, 1.0), rel=1e-6)
    assert main(["entanglement", str(path)]) == 0  # optimal T within the default bounds
    out = capsys.readouterr().out
    t = float(out.split("temperature :")[1].split()[0])
    assert "nan" not in out.lower()
    assert _value(out) == pytest.approx(snnl_reference_mean(x, y, t), rel=1e-4)


# ----------------------------------------------------------------------------- .npy, estimate, json


def _npy_pair(tmp_path, n=400, d=5, seed=3, labels_name="f_labels.npy"):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    x = (rng.normal(size=(n, d)) + 0.8 * y[:, None]).astype(np.float32)
    np.save(tmp_path / "f.npy", x)
    np.save(tmp_path / labels_name, y)
    return tmp_path / "f.npy", tmp_path / labels_name, x, y


def _json(out: str) -> dict:
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out  # one JSON object and nothing else on stdout
    return json.loads(lines[0])


def test_npy_file_exact_value_read_block_by_block(tmp_path, capsys):
    path, _, x, y = _npy_pair(tmp_path)  # labels found beside it as f_labels.npy
    assert main(["entanglement", str(path), "--temperature", "3"]) == 0
    out = capsys.readouterr().out
    assert _value(out) == pytest.approx(snnl_reference_mean(x, y, 3.0), rel=1e-5)
    assert "method      : exact" in out


def test_npy_needs_labels(tmp_path, capsys):
    np.save(tmp_path / "f.npy", np.ones((4, 2), dtype=np.float32))
    assert main(["entanglement", str(tmp_path / "f.npy")]) == 2
    assert "needs its labels" in _one_error_line(capsys.readouterr().err)
    np.save(tmp_path / "y.npy", np.ones(3, dtype=np.int64))
    assert main(["entanglement", str(tmp_path / "f.npy"), "--labels", str(tmp_path / "y.npy")]) == 2
    assert "4 feature rows but 3 labels" in _one_error_line(capsys.readouterr().err)


def test_json_exact(tmp_path, capsys):
    path, labels, x, y = _npy_pair(tmp_path, labels_name="y.npy")
    assert main(["entanglement", str(path), "--labels", str(labels), "--temperature", "2",
                 "--json"]) == 0  # fmt: skip
    result = _json(capsys.readouterr().out)
    assert result["method"] == "exact" and result["temperature"] == 2.0
    assert (result["n"], result["d"], result["classes"]) == (400, 5, 4)
    assert result["value"] == pytest.approx(snnl_reference_mean(x, y, 2.0), rel=1e-5)
    assert "interval" not in result


def test_json_estimate_with_interval(tmp_path, capsys):
    path, _, x, y = _npy_pair(tmp_path)
    args = ["entanglement", str(path), "--temperature", "2", "--anchors", "150", "--json"]
    assert main([*args, "--confidence", "0.9", "--seed", "4"]) == 0
    result = _json(capsys.readouterr().out)
    assert result["method"] == "estimate"
    assert result["anchors"] == 150 and result["population"] == 400
    assert result["confidence"] == 0.9
    lo, hi = result["interval"]
    assert lo < result["value"] < hi
    exact = snnl_reference_mean(x, y, 2.0)
    assert abs(result["value"] - exact) < 5 * result["std_error"]
    assert main([*args, "--confidence", "0.9", "--seed", "4"]) == 0  # seeded: reproducible
    assert _json(capsys.readouterr().out) == result


def test_npy_and_npz_of_the_same_data_give_the_same_answer(tmp_path, capsys):
    """Issue 18: the .npy path searched T on 256 anchors and gave another T* than the same
    data in a .npz; up to EXACT_SEARCH_MAX points both search over every point."""
    path, _, x, y = _npy_pair(tmp_path, n=400)
    npz = _npz(tmp_path, x, y, name="same.npz")
    results = []
    for file in (path, npz):
        assert main(["entanglement", str(file), "--json"]) == 0
        results.append(_json(capsys.readouterr().out))
    a, b = results
    assert a["temperature"] == pytest.approx(b["temperature"], rel=1e-9)
    assert a["value"] == pytest.approx(b["value"], rel=1e-9)
    assert (
        a["temperature_choice"]
        == b["temperature_choice"]
        == ("optimal within the data's distance range")
    )
    assert "search_anchors" not in a and "search_anchors" not in b
    assert a["value"] == pytest.approx(snnl_reference_mean(x, y, a["temperature"]), rel=1e-5)
    for other in (a["temperature"] / 1.2, a["temperature"] * 1.2):  # the true minimum
        assert a["value"] <= snnl_reference_mean(x, y, other) + 1e-7


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_above_the_exact_limit_t_is_searched_on_anchors_and_said_so(
    tmp_path, capsys, monkeypatch, suffix
):
    from snnl import class_entanglement as fe

    monkeypatch.setattr(fe, "EXACT_SEARCH_MAX", 100)  # 200 points count as large
    path, _, x, y = _npy_pair(tmp_path, n=200)
    if suffix == ".npz":
        path = _npz(tmp_path, x, y)
    assert main(["entanglement", str(path), "--search-anchors", "200", "--plot",
                 str(tmp_path / "c.png")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "searched on 200 anchors (seed 0) against all 200 points" in out
    assert "plot        : " in out and "estimated on 200 anchors" in out
    t = float(out.split("temperature :")[1].split()[0])
    value = _value(out)
    assert value == pytest.approx(snnl_reference_mean(x, y, t), rel=1e-5)  # exact at that T
    for other in (t / 1.2, t * 1.2):  # every point an anchor: the true minimum
        assert value <= snnl_reference_mean(x, y, other) + 1e-7


def test_one_class_is_undefined_not_zero(tmp_path, capsys):
    """Issue 18: data with one class printed SNNL 0 and exited 0."""
    x, _ = _blobs(n=30)
    path = _npz(tmp_path, x, np.zeros(30, dtype=np.int64))
    for extra in ([], ["--temperature", "1"], ["--anchors", "10"]):
        assert main(["entanglement", str(path), *extra]) == 2
        captured = capsys.readouterr()
        line = _one_error_line(captured.err)
        assert "SNNL is undefined without a second class (all 30 labels are 0)" in line
        assert captured.out == ""


def test_bounds_that_cut_the_minimum_off_say_so(tmp_path, capsys):
    x, y = _blobs()
    path = _npz(tmp_path, x, y)
    assert main(["entanglement", str(path), "--json"]) == 0
    t_star = _json(capsys.readouterr().out)["temperature"]
    low = t_star * 100
    args = ["entanglement", str(path), "--t-min", str(low), "--t-max", str(low * 10), "--json"]
    assert main(args) == 0
    captured = capsys.readouterr()
    result = _json(captured.out)
    assert result["temperature"] == pytest.approx(low)
    warning = [line for line in captured.err.splitlines() if line.strip()]
    assert len(warning) == 1, captured.err
    assert warning[0].startswith("snnl entanglement: warning: the minimum of SNNL over T lies")
    assert "below the lower bound" in warning[0]
    assert result["temperature_choice"].startswith("the lower bound of [")
    args = ["entanglement", str(path), "--t-min", str(t_star / 1e3), "--t-max", str(t_star / 10)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "the minimum lies above it, not SNNL*" in captured.out
    assert "above the upper bound" in captured.err
    args = ["entanglement", str(path), "--t-min", str(t_star / 10), "--t-max", str(t_star * 10)]
    assert main([*args, "--json"]) == 0
    captured = capsys.readouterr()
    assert _json(captured.out)["temperature_choice"].startswith("optimal within [")
    assert captured.err == ""


def test_t_min_and_t_max_go_together(tmp_path, capsys):
    x, y = _blobs()
    path = _npz(tmp_path, x, y)
    assert main(["entanglement", str(path), "--t-min", "1"]) == 2
    assert "--t-min and --t-max go together" in _one_error_line(capsys.readouterr().err)


def test_the_plot_has_a_log_t_axis_the_minimum_marked_and_an_interesting_y_range(
    tmp_path, capsys, monkeypatch
):
    """Issue 18: the y axis spanned the curve's small-T blow-up and hid the minimum."""
    import snnl.figures

    figures = []
    save = snnl.figures.save_figure

    def keep(fig, path):
        ax = fig.axes[0]
        figures.append((ax.get_xscale(), ax.get_ylim(), [line.get_xydata() for line in ax.lines]))
        save(fig, path)

    monkeypatch.setattr(snnl.figures, "save_figure", keep)
    x, y = _blobs(n=150)
    path = _npz(tmp_path, x, y)
    plot = tmp_path / "curve.png"
    assert main(["entanglement", str(path), "--plot", str(plot), "--json"]) == 0
    result = _json(capsys.readouterr().out)
    ((scale, (bottom, top), lines),) = figures
    assert scale == "log"
    curve = lines[0]
    t, v = result["temperature"], result["value"]
    assert [tuple(p) for p in lines[-1]] == [pytest.approx((t, v))]  # the marked minimum
    assert bottom < v < top
    assert curve[:, 1].min() >= v - 1e-6 * abs(v)
    assert curve[:, 1].max() > 10 * top  # the small-T side is cut, not squashing the minimum
    assert top < 1.2 * result["upper_bound"]
    assert curve[0, 0] == pytest.approx(t / 1e3) and curve[-1, 0] == pytest.approx(t * 1e3)
    # the same curve from the reference, at a few of its temperatures
    for temp, value in curve[:: len(curve) // 6]:
        assert value == pytest.approx(snnl_reference_mean(x, y, temp), rel=1e-4, abs=1e-6)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--anchors", "1"], "--anchors must be >= 2"),
        (["--confidence", "1.5"], r"--confidence must be in \(0, 1\)"),
        (["--t-min", "10", "--t-max", "1"], "--t-min must be below --t-max"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, capsys, args, message):
    path, _, _, _ = _npy_pair(tmp_path, n=20)
    assert main(["entanglement", str(path), *args]) == 2
    captured = capsys.readouterr()
    assert re.search(message, _one_error_line(captured.err)) and captured.out == ""


@pytest.mark.slow
def test_float64_costs_at_most_a_few_times_float32():
    """Issue 18: float64 `snnl entanglement` of 2,000 x 32 was reported at 36 s. Measured
    here (1 thread, best of 3, curve included): 0.6x to 2.2x float32 on six kinds of data."""
    import time

    import torch

    from snnl import feature_entanglement

    rng = np.random.default_rng(0)
    y = np.arange(2000) % 10
    x = rng.normal(size=(2000, 32))
    x[np.arange(2000), y] += 0.5
    best = {}
    with torch.inference_mode():
        for _ in range(3):
            for dtype in (torch.float32, torch.float64):
                feats = torch.from_numpy(x).to(dtype)
                start = time.perf_counter()
                feature_entanglement(feats, torch.from_numpy(y), curve=True)
                seconds = time.perf_counter() - start
                best[dtype] = min(best.get(dtype, seconds), seconds)
    assert best[torch.float64] < 4 * best[torch.float32], best
