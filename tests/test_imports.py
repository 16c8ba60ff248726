"""The import graph of src/iapo: no module imports another that (in the end) imports it.

Only the imports that run when a module is loaded count: those at the top level of a module
(and in top-level ``if``/``try`` blocks, but for ``if TYPE_CHECKING:``); an import inside a
function runs when the function is called. Importing ``a.b.c`` loads the packages ``a`` and
``a.b`` first, so those edges count too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def load_time_imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(module, names) of every import that runs when the module is loaded."""
    found: list[tuple[str, list[str]]] = []

    def walk(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.extend((a.name, []) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((node.module, [a.name for a in node.names]))
            elif isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" not in test:
                    walk(node.body)
                walk(node.orelse)
            elif isinstance(node, ast.Try):
                walk(node.body)
                for h in node.handlers:
                    walk(h.body)
                walk(node.orelse)
                walk(node.finalbody)

    walk(tree.body)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for target, names in load_time_imports(ast.parse(path.read_text())):
            if not target.startswith("iapo"):
                continue
            wanted = [target] + [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
            for w in wanted:
                parts = w.split(".")
                for k in range(1, len(parts) + 1):  # the packages above load first
                    dep = ".".join(parts[:k])
                    if dep in modules and dep != name and not name.startswith(dep + "."):
                        graph[name].add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle_and_no_false_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_import_cycle_among_the_modules() -> None:
    graph = import_graph()
    assert len(graph) > 40 and graph["iapo.serve.core"]  # the graph was read
    assert cycles(graph) == []


def test_importing_the_policy_loads_no_training() -> None:
    out = subprocess.run([sys.executable, "-c", "import sys, iapo.policy; "
                          "print(sorted(m for m in sys.modules if m.startswith('iapo.')))"],
                         capture_output=True, text=True, check=True).stdout
    assert "iapo.policy" in out and "iapo.training" not in out and "iapo.learners" not in out


def test_the_public_names_agree_and_exist() -> None:
    import importlib

    import iapo

    tree = ast.parse((SRC / "iapo" / "__init__.py").read_text())
    typed = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.If)
             and "TYPE_CHECKING" in ast.unparse(node.test)
             for imp in node.body if isinstance(imp, ast.ImportFrom) for a in imp.names}
    home = iapo._HOME  # noqa: SLF001 - the table the three lists agree with
    assert set(iapo.__all__) == set(home) == typed
    for name, module in home.items():
        assert getattr(importlib.import_module(module), name) is getattr(iapo, name)
    for name in ("PSSTAuto", "DEFAULT_LEARNER", "Choice", "Stopping", "LearnerResult"):
        assert name in iapo.__all__
