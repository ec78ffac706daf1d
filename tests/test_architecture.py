"""The house rules of docs/developers.md, checked on the source: no import cycle among
snnl's modules, no module importing a `_private` name of another, no file over 900 lines."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 900


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "snnl").rglob("*.py")):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]):
    """(imported module, private name or None) for every snnl import of the module."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    aliases: dict[str, str] = {}
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            if not module.startswith("snnl"):
                continue
            for alias in node.names:
                full = f"{module}.{alias.name}"
                if full in modules:
                    found.append((full, None))
                    aliases[alias.asname or alias.name] = full
                else:
                    private = alias.name.startswith("_") and not alias.name.startswith("__")
                    found.append((module, alias.name if private else None))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("snnl"):
                    found.append((alias.name, None))
                    aliases[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and aliases[node.value.id] != name
        ):
            found.append((aliases[node.value.id], node.attr))
    return found


def test_no_private_names_across_modules():
    modules = _modules()
    bad = [
        f"{name} uses {target}.{private}"
        for name, path in modules.items()
        for target, private in _imports(name, path, modules)
        if private is not None and target != name
    ]
    assert bad == []


def test_no_import_cycle():
    modules = _modules()
    graph = {
        name: {t for t, _ in _imports(name, path, modules) if t in modules and t != name}
        for name, path in modules.items()
    }
    # a package imports its submodules to re-export them; that arrow points down
    graph = {n: {t for t in ts if not t.startswith(n + ".")} for n, ts in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_no_source_file_over_the_limit():
    long = {
        str(p.relative_to(SRC)): n
        for p in _modules().values()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
