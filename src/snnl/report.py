"""``snnl reproduce`` and its report: run the registered experiments, save results,
and build report.md / report.html (one self-contained file) from saved results only.

Output folder:

    results.json   {"snnl_version", "config", "complete", "experiments": {name: results}}
    report.md      markdown, figures linked from figures/
    report.html    the same, figures embedded as base64 PNG
    figures/*.png
    runs/          the trained models (reused by later calls: a finished run is not retrained,
                   an unfinished one resumes)

``complete`` is false until every requested experiment has finished; the report of
an incomplete run says so at the top.
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from snnl import __version__, _io
from snnl.experiments import ReproduceConfig, Section, registry

__all__ = ["reproduce", "write_report"]

RESULTS = "results.json"


def reproduce(config: ReproduceConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run the experiments of ``config`` into ``out_dir``, then write the report.

    results.json is rewritten after each experiment with ``"complete": false``
    until the last one is done.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = config.experiments or list(registry())
    results: dict[str, Any] = {
        "snnl_version": __version__,
        "config": asdict(config),
        "complete": False,
        "experiments": {},
        "seconds": {},
    }
    for name in names:
        started = time.perf_counter()
        print(f"[snnl] experiment {name} ...", flush=True)
        results["experiments"][name] = registry()[name].run(config, out)
        results["seconds"][name] = round(time.perf_counter() - started, 2)
        print(f"[snnl] experiment {name} done in {results['seconds'][name]:.1f} s", flush=True)
        _io.write_json(out / RESULTS, results)
    results["complete"] = True
    _io.write_json(out / RESULTS, results)
    write_report(out)
    return results


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
    for name, res in data["experiments"].items():
        if name not in experiments:
            raise ValueError(f"{out / RESULTS} has results of unknown experiment {name!r}")
        sections.append(experiments[name].section(res, fig_dir))
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
    secs = data.get("seconds", {})
    if secs:
        header += [
            "",
            "Time per experiment: " + ", ".join(f"{k} {v:.0f} s" for k, v in secs.items()),
        ]
    md = "\n".join(header) + "\n"
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
