"""report.md and report.html (snnl.report), checked by parsing the page (html.parser).

Issue 18: the hand-made renderer turned Markdown bullet lists into paragraphs, let
``SNNL*`` in a caption start an italic run, and drew the claims table about 5,000 px
tall. The page is now CommonMark with tables (markdown-it-py), plain text is escaped,
and every table sits in a scrollable box.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest

import fake_experiments as fake
from snnl.experiments.base import Claim, Section
from snnl.experiments.config import ReproduceConfig
from snnl.report import claims_table, escape_markdown, render_html
from snnl.runner import reproduce


class Page(HTMLParser):
    """The parts of a page the tests look at: elements with their ancestors, the text
    of every element, and the page's CSS."""

    VOID = {"img", "meta", "br", "hr"}

    def __init__(self, text: str) -> None:
        super().__init__()
        self.stack: list[tuple[str, dict[str, str | None]]] = []
        self.elements: list[dict] = []  # {"tag", "attrs", "ancestors", "text"}
        self.open: list[dict] = []
        self.feed(text)
        self.close()
        assert not self.open, [e["tag"] for e in self.open]

    def handle_starttag(self, tag, attrs):
        element = {
            "tag": tag,
            "attrs": dict(attrs),
            "ancestors": [(t, a.get("class")) for t, a in self.stack],
            "text": "",
        }
        self.elements.append(element)
        if tag not in self.VOID:
            self.stack.append((tag, dict(attrs)))
            self.open.append(element)

    def handle_startendtag(self, tag, attrs):  # <img ... />
        assert tag in self.VOID, tag
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1][0] == tag, (tag, self.stack[-3:])
        self.stack.pop()
        self.open.pop()

    def handle_data(self, data):
        for element in self.open:
            element["text"] += data

    def all(self, tag: str) -> list[dict]:
        return [e for e in self.elements if e["tag"] == tag]

    @property
    def style(self) -> str:
        return self.all("style")[0]["text"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A reproduction of two stand-in experiments: (report.md, parsed report.html)."""
    out = tmp_path_factory.mktemp("rep")
    config = ReproduceConfig(dataset="digits", seeds=1, limit_train=100, limit_test=60)
    reproduce(config, out, experiments=fake.registry(fake.experiment("a"), fake.experiment("b")))
    return (out / "report.md").read_text(), Page((out / "report.html").read_text())


def test_bullet_lists_are_lists(report):
    _, page = report
    lists = page.all("ul")
    assert len(lists) == 2  # one per section
    items = [li["text"].strip() for li in page.all("li")]
    assert items == ["first item with SNNL*", "second item"] * 2
    assert not [p for p in page.all("p") if p["text"].lstrip().startswith("- ")]


def test_only_intended_italics(report):
    """Italics: the verdict words of the rule (and its word *fragile*) and the figure
    captions, nothing else; ``SNNL*`` and ``T*(c x)`` show as written."""
    md, page = report
    captions = {f"SNNL* of {n} per layer (T* at each layer's minimum)" for n in "ab"}
    ems = [e["text"] for e in page.all("em")]
    rule_words = fake.VERDICT_WORDS | {"fragile"}
    assert set(ems) == rule_words | captions
    assert len(ems) == len(rule_words) + len(captions)
    text = " ".join(p["text"] for p in page.all("p"))
    assert "SNNL* is scale-invariant, T*(c x) = c^2 T*(x)." in text
    assert "\\*" not in "".join(e["text"] for e in page.elements)  # no escape shows
    assert "*SNNL\\* of a per layer (T\\* at each layer's minimum)*" in md


def test_tables_scroll_in_boxes_and_keep_their_cells(report):
    _, page = report
    tables = page.all("table")
    assert len(tables) == 4  # the provenance, the claims, one per section
    for table in tables:
        assert table["ancestors"][-1] == ("div", "table-wrap")
    style = page.style.replace(" ", "")
    assert ".table-wrap{overflow:auto;max-height:75vh" in style
    assert "position:sticky" in style and "font-size:.85em" in style
    claims = next(t for t in tables if "Paper 2019" in t["text"])
    rows = [e for e in page.elements if e["tag"] == "tr" and "Paper 2019" in e["text"]]
    assert len(rows) == 2 and claims
    start = page.elements.index(rows[0])
    after = page.elements[start + 1 :]
    end = next((i for i, e in enumerate(after) if e["tag"] == "tr"), len(after))
    cells = [e for e in after[:end] if e["tag"] == "td"]
    assert len(cells) == 8  # a "|" in the claim split no cell
    assert cells[0]["text"] == "1"
    assert cells[1]["text"] == "a: SNNL* rises | falls"
    assert cells[5]["text"] == "-"  # no comparison recorded: no interval
    assert cells[6]["text"] == "inconclusive (fewer than two seeds * here)"
    assert cells[7]["text"] == "inconclusive (p 1)"


def test_figures_are_embedded_with_their_alt_text(report):
    _, page = report
    images = page.all("img")
    assert len(images) == 2
    for image, name in zip(images, "ab", strict=True):
        assert image["attrs"]["src"].startswith("data:image/png;base64,iVBORw0KGgo")
        assert image["attrs"]["alt"] == f"SNNL* of {name} per layer (T* at each layer's minimum)"


@pytest.mark.parametrize(
    "text",
    [
        "SNNL* of a and SNNL*",
        "*starred* and **bold**",
        "a_b_c and _x_",
        "T*(c x) = c^2 T*(x)",
        "[not a link](http://x) and ![no image](y.png)",
        "back\\slash and `code`",
        "a | b",
        "1 < 2 > 0 & done",
    ],
)
def test_escaped_text_renders_as_written(text):
    """escape_markdown, read back through the renderer: the text, with no markup."""
    page = Page(render_html(escape_markdown(text) + "\n", Path(".")))
    (paragraph,) = page.all("p")
    assert paragraph["text"] == text
    assert [e["tag"] for e in page.elements if e["tag"] not in ("html", "head", "meta")] == [
        "title",
        "style",
        "body",
        "p",
    ]


def test_claims_table_cells_are_escaped():
    claim = Claim("SNNL* of x_1 | y", "P 2019", "digits", "0.5 vs 0.4", "holds", "T* at bound")
    row = claims_table([claim]).splitlines()[-1]
    assert row == (
        "| 1 | SNNL\\* of x\\_1 \\| y | P 2019 | digits | 0.5 vs 0.4 | - "
        "| **holds** (T\\* at bound) | holds (not adjusted) |"
    )


def test_a_missing_figure_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="report figure .*gone.png not found"):
        render_html("![x](figures/gone.png)\n", tmp_path)


def _claims_with_tests() -> list[Claim]:
    from snnl.experiments.base import compare_groups, compare_paired

    tests = [
        compare_groups([0.9, 0.91, 0.92, 0.9], [0.80, 0.81, 0.82, 0.8], expect="greater"),
        compare_paired([1.0, 2.0, 3.0], [0.5, 1.4, 2.6], expect="greater", label="gain"),
        compare_paired([0.2, 0.1, 0.3], [0.21, 0.3, 0.1], expect="less", margin=0.05),
        compare_groups([0.5], [0.4, 0.45], expect="greater"),  # no interval
    ]
    return [Claim(f"claim {i}", "P", "s", "m", c.verdict, c.note, (c,)) for i, c in
            enumerate(tests)] + [Claim("untested", "P", "s", "m", "holds")]  # fmt: skip


def test_holm_adjusted_verdicts_against_a_hand_loop():
    from snnl.report import ALPHA, adjusted_verdicts

    claims = _claims_with_tests()
    raw = [c.p_value for c in claims]
    assert raw[2] == raw[3] == 1.0 and raw[4] is None  # inconclusive ones count with p = 1
    family = [p for p in raw if p is not None]
    order = sorted(range(len(family)), key=lambda i: family[i])
    expected, running = [0.0] * len(family), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(family) - rank) * family[i]))
        expected[i] = running
    got = adjusted_verdicts(claims)
    assert [q for q, _ in got[:4]] == pytest.approx(expected)
    for (q, verdict), claim in zip(got[:4], claims[:4], strict=True):
        assert verdict == (claim.verdict if q <= ALPHA else "inconclusive")
    assert got[1] == (pytest.approx(3 * raw[1]), "holds")  # second smallest: times 3
    # five claims at p = 0.013: 5 x 0.013 > 0.05, each raw "holds" becomes inconclusive
    five = adjusted_verdicts([claims[1]] * 5)
    assert five == [(pytest.approx(5 * raw[1]), "inconclusive")] * 5
    assert got[4] == (None, "holds (not adjusted)")
    table = claims_table(claims)
    assert "| **holds** (" in table and "| inconclusive (p " in table
    assert "| gain: +0.5 \\[+0.2516, +0.7484\\] (paired t, n 3) | **holds**, *fragile* (" in table
    assert "margin 0.05" in table and "no interval (fewer than two values per arm)" in table


def test_forest_plot_above_the_claims_table(tmp_path):
    from snnl.report import FOREST, forest_figure, render_markdown

    claims = _claims_with_tests()
    assert forest_figure(claims, tmp_path / "forest.png")
    assert (tmp_path / "forest.png").read_bytes()[:4] == b"\x89PNG"
    assert not forest_figure(claims[3:], tmp_path / "none.png")  # no interval: no figure
    assert not (tmp_path / "none.png").exists()
    module = type("M", (), {"NAME": "m", "section": staticmethod(lambda r, d: Section("S", "x")),
                            "claims": staticmethod(lambda r: claims)})  # fmt: skip
    data = {"experiments": {"m": {}}, "provenance": {"m": {}}}
    md = render_markdown(data, tmp_path, experiments={"m": module})
    assert (tmp_path / FOREST).is_file()
    assert md.index(f"figures/{FOREST}") < md.index("Verdict rule:")
