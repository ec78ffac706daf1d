"""The report of ``snnl reproduce``: report.md and report.html from saved results only.

:func:`write_report` reads ``results.json`` (written by :mod:`snnl.runner`), asks each
experiment for its section and its claims, and writes the report: a claims table
first (each seed paper's claim, the data and model it was measured on, the measured
values and a verdict from the rule stated above the table), then one section per
experiment with its figures. ``snnl report DIR`` rebuilds it without retraining.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

from snnl import _io
from snnl.experiments import Claim, Section, registry
from snnl.experiments.base import VERDICT_RULE

__all__ = ["write_report", "claims_table"]

RESULTS = "results.json"


def _read_results(out: Path) -> dict[str, Any]:
    path = out / RESULTS
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: {out} holds no saved results (run `snnl reproduce --out {out}`)"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(data, dict) or "experiments" not in data:
        raise ValueError(f"{path} is not an snnl results file (no 'experiments' key)")
    return data


def write_report(out_dir: str | Path) -> Path:
    """Build report.md, report.html and the figures of ``out_dir`` from its results.json."""
    out = Path(out_dir)
    data = _read_results(out)
    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    experiments = registry()
    sections: list[Section] = []
    claims: list[Claim] = []
    for name, res in data["experiments"].items():
        if name not in experiments:
            raise ValueError(f"{out / RESULTS} has results of unknown experiment {name!r}")
        sections.append(experiments[name].section(res, fig_dir))
        claims += experiments[name].claims(res)
    config = data.get("config", {})
    header = [
        "# snnl report",
        "",
        f"snnl {data.get('snnl_version', '?')}; dataset `{config.get('dataset')}`, "
        f"{config.get('seeds')} seed(s){', full settings' if config.get('full') else ''}.",
    ]
    if not data.get("complete"):
        header += [
            "",
            "**INCOMPLETE: not every requested experiment finished; "
            "the sections below are the ones that did.**",
        ]
    health = _unhealthy_runs(out, data)
    if health:
        header += ["", "Training runs that were not healthy (never averaged silently):", ""]
        header += [f"- `{name}`: {verdict}" for name, verdict in health]
    secs = data.get("seconds", {})
    if secs:
        header += [
            "",
            "Time per experiment: " + ", ".join(f"{k} {v:.0f} s" for k, v in secs.items()),
        ]
    md = "\n".join(header) + "\n"
    md += "\n## What the papers claim, and what we saw\n\n" + claims_table(claims) + "\n"
    for s in sections:
        md += f"\n## {s.title}\n\n{s.markdown}\n"
        for fname, caption in s.figures:
            md += f"\n![{caption}](figures/{fname})\n\n*{caption}*\n"
    _io.write_text(out / "report.md", md)
    _io.write_text(out / "report.html", _html(md, fig_dir))
    return out / "report.html"


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
    return re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", text)


def _html(md: str, fig_dir: Path) -> str:
    """Render the subset of markdown the report uses; images become data URIs."""
    body: list[str] = []
    table: list[list[str]] = []
    para: list[str] = []

    def flush() -> None:
        if para:
            body.append(f"<p>{_inline(' '.join(para))}</p>")
            para.clear()
        if table:
            head, *rows = [r for r in table if not set("".join(r)) <= set("-: ")]
            body.append(
                "<table><thead><tr>"
                + "".join(f"<th>{_inline(c)}</th>" for c in head)
                + "</tr></thead><tbody>"
            )
            for r in rows:
                body.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>")
            body.append("</tbody></table>")
            table.clear()

    for line in md.splitlines():
        img = re.fullmatch(r"!\[(.*)\]\(figures/(.+)\)", line.strip())
        if line.startswith("#"):
            flush()
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif img:
            flush()
            data = base64.b64encode((fig_dir / img.group(2)).read_bytes()).decode()
            body.append(
                f'<figure><img alt="{html.escape(img.group(1))}" '
                f'src="data:image/png;base64,{data}"></figure>'
            )
        elif line.startswith("|"):
            if para:
                flush()
            table.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif not line.strip():
            flush()
        else:
            if table:
                flush()
            para.append(line.strip())
    flush()
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;"
        "color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:4px 8px;text-align:left}th{background:#f3f3f3}img{max-width:100%}"
        "code{background:#f3f3f3;padding:0 3px}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>snnl report</title><style>{style}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def claims_table(claims: list[Claim]) -> str:
    """The claims table (markdown) with the verdict rule above it.

    >>> from snnl.experiments import Claim
    >>> print(claims_table([Claim("A beats B", "Paper 2019", "digits, MLP", "0.9 vs 0.8",
    ...                           "holds", "diff +0.1")]).splitlines()[-1])
    | A beats B | Paper 2019 | digits, MLP | 0.9 vs 0.8 | **holds** (diff +0.1) |
    """
    lines = [
        f"Verdict rule: {VERDICT_RULE}",
        "",
        "| claim | source | measured on | measured | verdict |",
        "|---|---|---|---|---|",
    ]
    for c in claims:
        note = f" ({c.note})" if c.note else ""
        cells = [c.claim, c.source, c.setting, c.measured, f"**{c.verdict}**{note}"]
        lines.append("| " + " | ".join(x.replace("|", "/") for x in cells) + " |")
    if not claims:
        lines.append("| (no experiment tested a claim) | | | | |")
    return "\n".join(lines)


def _run_paths(obj: Any) -> set[str]:
    """Every "runs/<folder>" string anywhere in the results."""
    if isinstance(obj, str):
        return {obj} if obj.startswith("runs/") else set()
    if isinstance(obj, dict):
        return set().union(*(_run_paths(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(_run_paths(v) for v in obj)) if obj else set()
    return set()


def _unhealthy_runs(out: Path, data: dict[str, Any]) -> list[tuple[str, str]]:
    """(run folder, verdict and reasons) of every run the results use whose health is not ok."""
    bad = []
    for rel in sorted(_run_paths(data["experiments"])):
        path = out / rel / "results.json"
        if not path.exists():
            continue
        try:
            health = json.loads(path.read_text()).get("health", {})
        except (OSError, json.JSONDecodeError):
            bad.append((path.parent.name, "results.json unreadable"))
            continue
        if health.get("verdict", "ok") != "ok":
            bad.append((path.parent.name, f"{health['verdict']}: {'; '.join(health['reasons'])}"))
    return bad
