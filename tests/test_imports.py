"""The package's module graph has no cycles (every `from rlsd... import` counted, inside functions too): one
responsibility per module means each can be read, and imported, without the ones that use it."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "rlsd"


def module_graph(root: Path) -> dict[str, set[str]]:
    names = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in root.rglob("*.py")}
    graph = {}
    for name, path in names.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == root.name:
                deps.add(node.module)
                deps |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in names}
        graph[name] = {d for d in deps if d in names and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert cycles(module_graph(PKG)) == []


def test_the_check_finds_a_cycle(tmp_path):
    """Negative control: a two-module circle, one side importing inside a function, is found."""
    pkg = tmp_path / "rlsd"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from rlsd.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from rlsd import a\n    return a\n")
    (pkg / "c.py").write_text("from rlsd.a import f\n")
    assert cycles(module_graph(pkg)) == [["rlsd.a", "rlsd.b"]]


@pytest.mark.parametrize("module", ["rlsd.testbed", "rlsd.testbed.scenes", "rlsd.testbed.demonstrator"])
def test_the_testbeds_light_modules_do_not_import_torch(module):
    import subprocess
    import sys

    code = f"import sys, {module}; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=PKG.parent).stdout.strip() == "False"
