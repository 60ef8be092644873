"""The shape of the tree: featcache's import graph has no cycle; tests and benchmarks import no file of each other.

Read from the code with ``ast``, as the architecture review measured it. An import inside a function runs when
the function is called, after every module has loaded, so only module-level imports count (and not those under
``if TYPE_CHECKING:``, which never run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


def _module_names(root: Path, package: str) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING"


def _module_level_imports(path: Path) -> list[ast.Import | ast.ImportFrom]:
    found, todo = [], list(ast.parse(path.read_text()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If | ast.Try | ast.With) and not _is_type_checking(node):
            todo += [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)]
    return found


def import_graph(root: Path = REPO / "featcache") -> dict[str, set[str]]:
    """featcache's modules and the featcache modules each imports at module level (``from .x import y`` names
    module ``x.y`` when ``y`` is a module, else ``x``)."""
    modules = _module_names(root, "featcache")
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in _module_level_imports(path):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
                continue
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            targets.update(f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each back edge a depth-first search meets (empty: the graph is a DAG)."""
    state, found = {}, []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append([*path[path.index(nxt) :], node, nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_the_import_graph_of_featcache_has_no_cycle():
    graph = import_graph()
    assert {"featcache.datasets", "featcache.datasets._base", "featcache.store._reader"} <= set(graph)
    assert "featcache.datasets._base" in graph["featcache.datasets.folder"]  # the graph sees relative imports
    assert cycles(graph) == []


def test_the_cycle_check_sees_a_cycle(tmp_path):
    pkg = tmp_path / "featcache"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("if True:\n    from ..a import x\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n")
    graph = import_graph(pkg)
    assert graph["featcache.a"] == {"featcache.sub.b"} and graph["featcache.c"] == set()
    assert cycles(graph) == [["featcache.a", "featcache.sub.b", "featcache.a"]]


def _imports_of(path: Path) -> tuple[set[str], bool, set[str]]:
    """(top-level names ``path`` imports, whether it loads a file by its path, string constants it puts on
    ``sys.path``)."""
    names, by_path, on_path = set(), False, set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call):
            func = node.func
            called = getattr(func, "attr", getattr(func, "id", ""))
            by_path |= called in ("spec_from_file_location", "run_path", "SourceFileLoader")
            owner = getattr(func, "value", None)
            if called in ("insert", "append") and getattr(owner, "attr", "") == "path":
                on_path |= {c.value for a in node.args for c in ast.walk(a) if isinstance(c, ast.Constant)}
    return names, by_path, on_path


def test_tests_and_benchmarks_import_no_file_of_each_other():
    tests = {p.stem: p for p in (REPO / "tests").glob("*.py")}
    benchmarks = {p.stem: p for p in (REPO / "benchmarks").glob("*.py")}
    assert "kill_resume" in benchmarks and "conftest" in tests
    wrong = []
    for group, files, forbidden, other in (
        ("tests", tests, benchmarks.keys(), "benchmarks"),
        ("benchmarks", benchmarks, tests.keys() | benchmarks.keys(), "tests"),  # what they share: featcache.testing
    ):
        for stem, path in files.items():
            names, by_path, on_path = _imports_of(path)
            wrong += [f"{group}/{stem}.py imports {n}" for n in sorted(names & forbidden)]
            wrong += [f"{group}/{stem}.py loads a file by its path"] if by_path else []
            wrong += [f"{group}/{stem}.py puts {other}/ on sys.path"] if other in on_path else []
    assert wrong == []


def test_the_cross_import_check_sees_each_way(tmp_path):
    bench = tmp_path / "bench.py"
    bench.write_text(
        'import sys\nsys.path.insert(0, str(REPO / "tests"))\nfrom data_factory import write_cifar10\n'
        'spec = importlib.util.spec_from_file_location("x", "benchmarks/x.py")\n'
    )
    assert _imports_of(bench) == ({"sys", "data_factory"}, True, {0, "tests"})


@pytest.mark.slow
def test_every_planted_bug_is_caught():
    # tests/planted_bugs.py plants each bug in turn and runs the tests meant to catch it: tens of minutes
    r = subprocess.run([sys.executable, str(REPO / "tests" / "planted_bugs.py")], capture_output=True, text=True)
    missed = [line for line in r.stdout.splitlines() if "CAUGHT" not in line]
    assert r.returncode == 0 and missed == [], r.stdout + r.stderr
