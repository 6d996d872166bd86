"""The house rules, checked: packages by stage with one-way imports, no cycles, small modules, no import-time
side effects, and one declared pipeline graph used by everything that runs or describes the pipeline."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "fraudops"

LAYERS: list[set[str]] = [
    {"__init__", "errors", "config", "retries", "process"},
    {"workspace"},
    {"compute"},
    {"context"},
    {"tracking"},
    {"data"},
    {"features"},
    {"modeling"},
    {"promotion"},
    {"batch"},
    {"monitoring"},
    {"serving"},
    {"pipeline"},
    {"dashboard"},
    {"aws"},
    {"demo"},
    {"cli"},
]
"""Lowest first: a module may import from its own layer and the layers above it in this list, never below."""

MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, module: str) -> set[str]:
    """Every fraudops module ``path`` imports, at module level or inside functions."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("fraudops")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base])
            if base.startswith("fraudops"):
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}
    return found


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS (and to docs/architecture.md)")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: {i for i in _imports(p, m) if i in modules and i != m} for m, p in modules.items()}


def test_every_module_has_a_layer_and_imports_point_one_way():
    bad = [
        f"{m} (layer {LAYERS[_layer(m)]}) imports {i} (layer {LAYERS[_layer(i)]})"
        for m, deps in _graph().items()
        for i in deps
        if _layer(i) > _layer(m)
    ]
    assert not bad, "imports that point upward:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = _graph()
    # a package's __init__ re-exporting its own modules is not a cycle between modules
    edges = {
        m: {d for d in deps if not (m.startswith(d + ".") and _modules()[d].name == "__init__.py")}
        for m, deps in graph.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(d) :], d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_modules_stay_small():
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"


def test_importing_has_no_side_effects():
    """Importing any module changes no environment variable and no library's log level: processes are
    configured where they start (``fraudops.process.configure``). Libraries that set variables of their own
    on import (polars, scikit-learn, MLflow) are imported first."""
    code = f"""
import importlib, json, logging, os
import polars, sklearn, mlflow  # libraries that set variables of their own when imported
before = (dict(os.environ), {{n: logging.getLogger(n).level for n in ("", "mlflow", "fraudops")}})
for name in {sorted(_modules())!r}:
    if name.endswith("__main__"):
        continue
    importlib.import_module(name)
after = (dict(os.environ), {{n: logging.getLogger(n).level for n in ("", "mlflow", "fraudops")}})
changed = sorted(k for k in set(before[0]) | set(after[0]) if before[0].get(k) != after[0].get(k))
print(json.dumps({{"env": changed, "levels": [before[1], after[1]]}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["env"] == []
    assert result["levels"][0] == result["levels"][1]


def test_hand_overs_come_from_earlier_steps():
    """Each step consumes only results of steps that run before it in the one declared graph."""
    from fraudops.pipeline import graph

    names = graph.PIPELINE.names
    assert graph.PIPELINE.entry_points == ["all", *names]
    for step in graph.PIPELINE.steps:
        assert set(step.consumes) <= set(names[: names.index(step.name)]), step.name
