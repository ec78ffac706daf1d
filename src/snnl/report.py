"""The report of ``snnl reproduce``: report.md and report.html from results.json alone.

:func:`write_report` reads ``results.json`` (written by :mod:`snnl.runner`), asks each
experiment for its section and its claims, and writes the report: which experiment ran
when (snnl version, dataset, options, time), the training runs that were not healthy,
a claims table (each seed paper's claim, the data and model it was measured on, the
measured values and a verdict from the rule stated above the table), then one section
per experiment with its figures. Nothing else is read: copying results.json into an
empty folder and running ``snnl report DIR`` gives the same report.md.

results.json (format 2)::

    {"format": 2, "snnl_version": "...", "complete": true,
     "experiments": {name: {"settings": {...}, ...the experiment's results}},
     "provenance": {name: {"snnl_version", "config", "finished", "seconds",
                           "unhealthy_runs": [{"run", "health", "reasons"}]}}}

Each experiment's entry comes from the latest ``snnl reproduce`` that ran it (a call
with ``--experiments`` replaces only the entries it names). A format-1 file (one
top-level "config" and "seconds", no provenance) is read too; its run health was not
recorded, and the report says so.

report.md is CommonMark with tables; report.html is rendered from it by markdown-it-py
(figures embedded as data URIs, tables in scrollable boxes). A report is written
whole or not at all: it is built in a staging folder and moved into place only when
every section and figure is done.
"""

from __future__ import annotations

import base64
import datetime
import json
import mimetypes
import os
import re
import shutil
import tempfile
import textwrap
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from types import ModuleType
from typing import Any

from snnl import _io
from snnl.experiments import Claim, Section, registry
from snnl.experiments.base import VERDICT_RULE, Comparison
from snnl.experiments.config import ReproduceConfig
from snnl.stats import holm

__all__ = [
    "ALPHA",
    "FORMAT",
    "RESULTS",
    "REPORT_FILES",
    "adjusted_verdicts",
    "claims_table",
    "forest_figure",
    "escape_markdown",
    "read_results",
    "render_html",
    "render_markdown",
    "write_report",
]

RESULTS = "results.json"
REPORT_FILES = ("report.md", "report.html")
FIGURES = "figures"
#: The results.json format this version writes (format 1: no per-experiment provenance).
FORMAT = 2

# ----------------------------------------------------------------------------- results.json


def read_results(out_dir: str | Path) -> dict[str, Any]:
    """The results.json of ``out_dir``, checked and in the current :data:`FORMAT`.

    A missing file is a FileNotFoundError, a damaged or foreign one a ValueError,
    each naming the file. A format-1 file gets a provenance entry per experiment from
    its top-level config (finish time and run health: None, not recorded).
    """
    path = Path(out_dir) / RESULTS
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: {path.parent} holds no saved results "
            f"(run `snnl reproduce --out {path.parent}`)"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path} is damaged (not valid JSON: {err}); remove it (the trained runs in "
            f"{path.parent / 'runs'} are reused) or choose another output folder"
        ) from err
    if not isinstance(data, dict) or not isinstance(data.get("experiments"), dict):
        raise ValueError(f"{path} is not an snnl results file (no 'experiments' mapping)")
    version = data.get("format", 1)
    if not isinstance(version, int) or version > FORMAT:
        raise ValueError(
            f"{path} has results format {version!r}, newer than this snnl reads ({FORMAT}); "
            "update snnl or choose another output folder"
        )
    provenance = data.get("provenance")
    if not isinstance(provenance, dict):
        provenance = {}
    for name in data["experiments"]:
        if not isinstance(provenance.get(name), dict):
            provenance[name] = {
                "snnl_version": data.get("snnl_version"),
                "config": data.get("config", {}),
                "finished": None,
                "seconds": data.get("seconds", {}).get(name),
                "unhealthy_runs": None,
            }
    data["provenance"] = provenance
    data.setdefault("complete", True)
    return data


# ----------------------------------------------------------------------------- markdown

_MARKUP = re.compile(r"([\\`*_\[\]|])")


def escape_markdown(text: str) -> str:
    """``text`` with the characters Markdown reads as inline markup (backslash, backtick,
    ``*``, ``_``, brackets, ``|``) backslash-escaped, so that plain text (a caption, a
    claim, a run's health reasons) shows as written: ``SNNL*`` starts no italic run,
    ``|`` splits no table cell. (``<`` and ``>`` need none: raw HTML is off, and the text
    never starts a line.)

    >>> print(escape_markdown("SNNL* at T*(x) | a_b"))
    SNNL\\* at T\\*(x) \\| a\\_b
    """
    return _MARKUP.sub(r"\\\1", str(text))


ALPHA = 0.05  # the family-wise error rate of the Holm-adjusted verdicts
FOREST = "claims_forest.png"


def adjusted_verdicts(claims: list[Claim]) -> list[tuple[float | None, str]]:
    """Each claim's Holm-adjusted decision p-value and adjusted verdict.

    The family is every claim with a decision p-value (:attr:`Claim.p_value`; an
    inconclusive claim counts with p = 1); :func:`snnl.stats.holm` adjusts them; the
    adjusted verdict is the raw one where the adjusted p-value is <= :data:`ALPHA`,
    else inconclusive. A decided claim with no recorded comparison has no p-value:
    ``(None, raw verdict + " (not adjusted)")``.

    >>> from snnl.experiments import Claim, compare_paired
    >>> c = compare_paired([1.0, 2.0, 3.0], [0.5, 1.4, 2.6], expect="greater")
    >>> claim = Claim("a > b", "P", "s", "m", c.verdict, c.note, comparisons=(c,))
    >>> [(round(p, 4), v) for p, v in adjusted_verdicts([claim, claim])]
    [(0.0261, 'holds'), (0.0261, 'holds')]
    """
    ps = [c.p_value for c in claims]
    family = [p for p in ps if p is not None]
    adjusted = iter(holm(family))
    out: list[tuple[float | None, str]] = []
    for claim, p in zip(claims, ps, strict=True):
        if p is None:
            out.append((None, f"{claim.verdict} (not adjusted)"))
            continue
        q = next(adjusted)
        out.append((q, claim.verdict if q <= ALPHA else "inconclusive"))
    return out


def _effect_text(c: Comparison) -> str:
    if c.interval is None:
        return "no interval (fewer than two values per arm)"
    iv = c.interval
    text = f"{iv.estimate:+.4g} [{iv.low:+.4g}, {iv.high:+.4g}] ({iv.method}"
    text += f", n {'/'.join(map(str, iv.n))})" + (f", margin {c.margin:g}" if c.margin else "")
    if c.healthy is not None and c.healthy.interval is not None:
        h = c.healthy.interval
        text += f"; healthy runs only {h.estimate:+.4g} [{h.low:+.4g}, {h.high:+.4g}]"
    if c.failures:
        text += "; failures " + " vs ".join(f.text() for f in c.failures)
    return (f"{c.label}: " if c.label else "") + text


def claims_table(claims: list[Claim]) -> str:
    """The claims table (markdown) with the verdict rule above it: each claim's effect
    with its 95% interval and margin, the raw verdict (bold, with its note) and the
    Holm-adjusted one (:func:`adjusted_verdicts`). Cells are plain text (escaped with
    :func:`escape_markdown`).

    >>> from snnl.experiments import Claim
    >>> print(claims_table([Claim("A beats B", "Paper 2019", "digits, MLP", "0.9 vs 0.8",
    ...                           "holds", "diff +0.1")]).splitlines()[-1].split(" | "))
    ['| 1', 'A beats B', 'Paper 2019', 'digits, MLP', '0.9 vs 0.8', '-', \
'**holds** (diff +0.1)', 'holds (not adjusted) |']
    """
    lines = [
        f"Verdict rule: {VERDICT_RULE}",
        "",
        "| # | claim | source | measured on | measured | effect, 95% CI (margin) | verdict "
        "| Holm-adjusted |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, (c, (q, adjusted)) in enumerate(zip(claims, adjusted_verdicts(claims), strict=True)):
        note = f" ({escape_markdown(c.note)})" if c.note else ""
        fragile = ", *fragile*" if c.fragile else ""
        effect = "; ".join(_effect_text(x) for x in c.comparisons) or "-"
        cells = [escape_markdown(x) for x in (c.claim, c.source, c.setting, c.measured, effect)]
        holm_cell = adjusted if q is None else f"{adjusted} (p {q:.3g})"
        row = [str(i + 1), *cells, f"**{c.verdict}**{fragile}{note}", holm_cell]
        lines.append("| " + " | ".join(row) + " |")
    if not claims:
        lines.append("| | (no experiment tested a claim) | | | | | | |")
    return "\n".join(lines)


def forest_figure(claims: list[Claim], path: Path) -> bool:
    """Write the claims' forest plot (:func:`snnl.figures.forest_plot`, one row per
    comparison with an interval) to ``path``; False (nothing written) when no claim has one."""
    from snnl.figures import ForestRow, forest_plot, save_figure

    rows = []
    for i, claim in enumerate(claims, 1):
        for c in claim.comparisons:
            if c.interval is None:
                continue
            iv = c.interval
            width = 48 if c.label else 88
            label = f"{i}. " + textwrap.shorten(claim.claim, width, placeholder="..")
            label += f" [{textwrap.shorten(c.label, 40, placeholder='..')}]" if c.label else ""
            flag = "fragile" if c.fragile else ""
            rows.append(ForestRow(label, iv.estimate, iv.low, iv.high, c.margin, c.expect,
                                  c.verdict, flag))  # fmt: skip
    if not rows:
        return False
    save_figure(forest_plot(rows, title="Every claim's effect, 95% CI and margin"), path)
    return True


def _options(config: Mapping[str, Any]) -> str:
    """The options of a reproduce config that change results, as command-line flags."""
    defaults = {f.name: f.default for f in fields(ReproduceConfig)}
    flags = []
    for name in ("full", "epochs", "model", "limit_train", "limit_test", "data_dir"):
        value = config.get(name, defaults[name])
        if value != defaults[name]:
            flag = "--" + name.replace("_", "-")
            flags.append(flag if value is True else f"{flag} {value}")
    return escape_markdown(", ".join(flags)) if flags else "defaults"


def _finished(stamp: str | None) -> str:
    if not stamp:
        return "(not recorded)"
    return datetime.datetime.fromisoformat(stamp).strftime("%Y-%m-%d %H:%M:%S")


def _header(data: dict[str, Any]) -> list[str]:
    provenance = data["provenance"]
    lines = [
        "# snnl report",
        "",
        "Each section comes from the latest `snnl reproduce` that ran its experiment "
        "(a call with `--experiments` replaces only the sections it names):",
        "",
        "| experiment | finished (UTC) | snnl | dataset | seeds | options | time |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in data["experiments"]:
        p = provenance[name]
        config = p.get("config") or {}
        seconds = p.get("seconds")
        lines.append(
            f"| {escape_markdown(name)} | {_finished(p.get('finished'))} "
            f"| {escape_markdown(p.get('snnl_version') or '?')} "
            f"| {escape_markdown(config.get('dataset', '?'))} | {config.get('seeds', '?')} "
            f"| {_options(config)} | {'?' if seconds is None else f'{seconds:.0f} s'} |"
        )
    if not data["experiments"]:
        lines.append("| (none) | | | | | | |")
    if not data.get("complete", True):
        lines += [
            "",
            "**INCOMPLETE: not every requested experiment finished; "
            "the sections below are the ones that did.**",
        ]
    bad: dict[str, dict[str, Any]] = {}
    unrecorded = []
    for name in data["experiments"]:
        runs = provenance[name].get("unhealthy_runs")
        if runs is None:
            unrecorded.append(name)
        for run in runs or ():
            bad.setdefault(run["run"], run)
    if bad:
        lines += ["", "Training runs that were not healthy (never averaged silently):", ""]
        lines += [
            f"- `{run}`: {escape_markdown(r['health'])}: {escape_markdown('; '.join(r['reasons']))}"
            for run, r in sorted(bad.items())
        ]
    if unrecorded:
        lines += [
            "",
            f"The health of the training runs of {', '.join(unrecorded)} was not recorded "
            "(results written before snnl recorded it): rerun them to list unhealthy runs.",
        ]
    return lines


def render_markdown(
    data: dict[str, Any],
    fig_dir: Path,
    *,
    experiments: Mapping[str, ModuleType] | None = None,
) -> str:
    """report.md of the results ``data`` (as :func:`read_results` returns them); the
    sections' figures are written into ``fig_dir`` (which must exist)."""
    modules = registry() if experiments is None else experiments
    sections: list[Section] = []
    claims: list[Claim] = []
    for name, res in data["experiments"].items():
        if name not in modules:
            raise ValueError(
                f"{RESULTS} has results of unknown experiment {name!r} "
                f"(known: {', '.join(modules)})"
            )
        sections.append(modules[name].section(res, fig_dir))
        claims += modules[name].claims(res)
    md = "\n".join(_header(data)) + "\n"
    md += "\n## What the papers claim, and what we saw\n\n"
    if forest_figure(claims, fig_dir / FOREST):
        caption = escape_markdown(
            "Every claim's effect (dot) with its 95% interval (bar) and no-effect margin "
            "(grey band), one row per comparison, numbered as the claims table below. Each "
            "row is in its own units, rescaled to its extent (the numbers at the right are "
            "in the measure's units) and oriented so that the claimed direction is to the "
            "right of 0: green holds, red does not hold, grey inconclusive (raw verdicts)."
        )
        md += f"![{caption}]({FIGURES}/{FOREST})\n\n*{caption}*\n\n"
    md += claims_table(claims) + "\n"
    for s in sections:
        md += f"\n## {s.title}\n\n{s.markdown}\n"
        for fname, caption in s.figures:
            text = escape_markdown(caption)
            md += f"\n![{text}]({FIGURES}/{fname})\n\n*{text}*\n"
    return md


# ----------------------------------------------------------------------------- html

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
    "color:#222;line-height:1.45}"
    ".table-wrap{overflow:auto;max-height:75vh;margin:1em 0;border:1px solid #ddd}"
    "table{border-collapse:collapse;font-size:.85em;line-height:1.3}"
    "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top;"
    "min-width:7em}"
    "th{background:#f3f3f3;position:sticky;top:0}"
    "img{max-width:100%}code{background:#f3f3f3;padding:0 3px}"
)


def _figure_uri(fig_dir: Path, src: str) -> str:
    path = fig_dir / src.removeprefix(f"{FIGURES}/")
    if not path.is_file():
        raise FileNotFoundError(f"report figure {path} not found (its section did not write it)")
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def render_html(md: str, fig_dir: Path) -> str:
    """report.html of the markdown ``md``: CommonMark with tables (markdown-it-py, raw
    HTML off), the figures under ``figures/`` embedded from ``fig_dir`` as data URIs,
    every table in a scrollable box.

    >>> page = render_html("- a\\n- b\\n\\n| x | y |\\n|---|---|\\n| 1 | 2 |\\n", Path("."))
    >>> "<ul>" in page and '<div class="table-wrap"><table>' in page
    True
    """
    from markdown_it import MarkdownIt

    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    parser.add_render_rule("table_open", lambda *args: '<div class="table-wrap"><table>\n')
    parser.add_render_rule("table_close", lambda *args: "</table></div>\n")
    tokens = parser.parse(md)
    for token in tokens:
        for child in token.children or ():
            src = child.attrGet("src") if child.type == "image" else None
            if isinstance(src, str) and src.startswith(f"{FIGURES}/"):
                child.attrSet("src", _figure_uri(fig_dir, src))
    body = parser.renderer.render(tokens, parser.options, {})
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>snnl report</title><style>{_STYLE}</style></head><body>\n"
        + body
        + "</body></html>\n"
    )


# ----------------------------------------------------------------------------- writing


def write_report(
    out_dir: str | Path,
    results: dict[str, Any] | None = None,
    *,
    experiments: Mapping[str, ModuleType] | None = None,
) -> Path:
    """Write report.md, report.html and figures/ of ``out_dir``; returns report.html.

    From ``out_dir``'s results.json, or from ``results`` (then saved as results.json
    first, once the report made of them is ready). Everything is built in a staging
    folder and moved into place only when complete: a section that fails leaves the
    folder as it was. ``experiments``: name -> experiment module (default: the registry).
    """
    out = Path(out_dir)
    data = read_results(out) if results is None else results
    html_path = out / "report.html"
    staging = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        (staging / FIGURES).mkdir()
        md = render_markdown(data, staging / FIGURES, experiments=experiments)
        page = render_html(md, staging / FIGURES)
        if results is not None:
            _io.write_json(out / RESULTS, results)
        (out / FIGURES).mkdir(exist_ok=True)
        for figure in sorted((staging / FIGURES).iterdir()):
            os.replace(figure, out / FIGURES / figure.name)
        _io.write_text(html_path, page)
        _io.write_text(out / "report.md", md)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return html_path
