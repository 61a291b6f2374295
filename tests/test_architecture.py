"""The architecture's rules, read from the source with `ast` (nothing imported, no Ray: seconds).

- No import circle between modules of `orchestrator/` and `workloads/`, counting imports inside
  functions (they run later, but a circle through them is still a circle) and leaving out only
  `if TYPE_CHECKING:` blocks, which never run. Imports made by computed name
  (`importlib.import_module(name)`, as the method and source registries do) are not seen.
- No two folders of `orchestrator/` or `workloads/` import each other, each taken
  whole (with the modules at their root as one-module folders).
- `workloads/` never imports `orchestrator/`.
- Only the tracking modules (`TRACKING_MODULES`) import `mlflow`.
- Every module is under `MAX_LINES` lines unless its docstring says why it is longer, in words
  such as "longer than 300 lines because ..." (`LONG_MODULE_REASON`).
- No import inside a function whose comment says it dodges a circle ("imports this",
  "circular", "circle", "cycle"): a circle is broken by moving code, not by deferring an import.
  Deferring a heavy import for start-up speed is fine; say so in its comment.

Each rule's checker is also run on a small made-up package, so a checker that finds nothing
because it is broken fails too.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("orchestrator", "workloads")
MAX_LINES = 300
# The modules that may import MLflow: the `orchestrator/tracking/` package (writes, and
# `tracking/lookup.py`: the reads across runs).
TRACKING_MODULES = {"orchestrator.tracking"}
TRACKING_PACKAGE = "orchestrator.tracking."
LONG_MODULE_REASON = re.compile(
    r"\b(longer than|more than|over|above|exceeds?)\s+300\s+lines\b", re.IGNORECASE
)
DODGES_A_CIRCLE = re.compile(r"imports this|circular|\bcircles?\b|\bcycles?\b", re.IGNORECASE)


@dataclass(frozen=True)
class Import:
    importer: str  # module name, e.g. orchestrator.pretrain.launch
    target: str  # the imported module, resolved to a module or package of the tree when internal
    line: int
    in_function: bool
    comment: str  # the import statement's lines plus a comment line right above it


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    relpath: str  # from the tree's root, as the failures name it
    source: str

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


def modules_under(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Module]:
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            relpath = path.relative_to(root).as_posix()
            found[name] = Module(name, path, relpath, path.read_text(encoding="utf-8"))
    return found


def imports_of(module: Module, known: set[str]) -> list[Import]:
    """Every import statement that runs (module level or in a function), target resolved."""
    return _imports_of(module, frozenset(known))


@functools.cache
def _imports_of(module: Module, known: frozenset[str]) -> list[Import]:
    tree = ast.parse(module.source, filename=str(module.path))
    return list(_walk(tree, module, known, module.source.splitlines(), in_function=False))


def _walk(
    node: ast.AST, module: Module, known: frozenset[str], lines: list[str], in_function: bool
) -> Iterator[Import]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for branch in child.orelse:  # the `else:` of `if TYPE_CHECKING:` does run
                yield from _walk(branch, module, known, lines, in_function)
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            for target in _targets(child, module, known):
                yield Import(module.name, target, child.lineno, in_function, _comment(child, lines))
            continue
        inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
        yield from _walk(child, module, known, lines, inner)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.Import | ast.ImportFrom, module: Module, known: frozenset[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the importer's package, up `level - 1` more
        package = module.name.split(".")
        if not module.is_package:
            package = package[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    # `from a.b import c` imports the module a.b.c when there is one, else names of a.b
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def _comment(node: ast.stmt, lines: list[str]) -> str:
    text = lines[node.lineno - 1 : node.end_lineno]
    above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
    return "\n".join([above, *text] if above.startswith("#") else text)


def import_graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    known = set(modules)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for module in modules.values():
        for found in imports_of(module, known):
            if found.target in known and found.target != module.name:
                graph[module.name].add(found.target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def describe_circle(component: list[str], graph: dict[str, set[str]]) -> str:
    members = set(component)
    edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a] & members)]
    return "; ".join(edges)


def imports_of_all(modules: dict[str, Module]) -> list[Import]:
    known = set(modules)
    return [found for module in modules.values() for found in imports_of(module, known)]


def workloads_importing_orchestrator(modules: dict[str, Module]) -> list[str]:
    return [
        f"{i.importer}:{i.line} imports {i.target}"
        for i in imports_of_all(modules)
        if i.importer.split(".")[0] == "workloads" and i.target.split(".")[0] == "orchestrator"
    ]


def mlflow_importers(modules: dict[str, Module]) -> list[str]:
    return sorted(
        {
            i.importer
            for i in imports_of_all(modules)
            if i.target.split(".")[0] == "mlflow" and not _is_tracking(i.importer)
        }
    )


def _is_tracking(module: str) -> bool:
    return module in TRACKING_MODULES or module.startswith(TRACKING_PACKAGE)


def long_modules(modules: dict[str, Module]) -> list[str]:
    too_long = []
    for module in modules.values():
        count = len(module.source.splitlines())
        docstring = ast.get_docstring(ast.parse(module.source)) or ""
        if count >= MAX_LINES and not LONG_MODULE_REASON.search(docstring):
            too_long.append(f"{module.relpath}: {count} lines")
    return sorted(too_long)


def circle_dodges(modules: dict[str, Module]) -> list[str]:
    return [
        f"{i.importer}:{i.line} ({i.comment.strip().splitlines()[-1].strip()})"
        for i in imports_of_all(modules)
        if i.in_function and DODGES_A_CIRCLE.search(i.comment)
    ]


def folder_circles(modules: dict[str, Module]) -> list[list[str]]:
    """Inside `orchestrator/` and `workloads/`, each folder and each module at their root taken
    as one node: the circles between them (a module circle inside one folder is also
    test_no_import_circles')."""
    graph = import_graph(modules)
    found: list[list[str]] = []
    for package in sorted(name for name in modules if name in PACKAGES):
        prefix = package + "."

        def child(name: str, prefix: str = prefix) -> str | None:
            if not name.startswith(prefix):
                return None
            return prefix + name[len(prefix) :].split(".")[0]

        folded: dict[str, set[str]] = {}
        for importer, targets in graph.items():
            node = child(importer)
            if node is None:
                continue
            folded.setdefault(node, set())
            for target in targets:
                other = child(target)
                if other is not None and other != node:
                    folded[node].add(other)
                    folded.setdefault(other, set())
        found += circles(folded)
    return found


# --------------------------------------------------------------------------------------------
# The rules, on this project.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project() -> dict[str, Module]:
    found = modules_under(ROOT)
    # the tree was found
    assert {"orchestrator.pretrain.launch", "workloads.pretrain"} <= set(found)
    return found


def test_no_import_circles(project):
    graph = import_graph(project)
    assert sum(map(len, graph.values())) > 100  # the imports were read
    found = [describe_circle(c, graph) for c in circles(graph)]
    assert not found, "import circles:\n" + "\n".join(found)


def test_no_circles_between_folders(project):
    found = folder_circles(project)
    assert not found, "folders that import each other: " + "; ".join(map(" <-> ".join, found))


def test_workloads_never_imports_orchestrator(project):
    assert not workloads_importing_orchestrator(project)


def test_only_the_tracking_modules_import_mlflow(project):
    importers = {i.importer for i in imports_of_all(project) if i.target.split(".")[0] == "mlflow"}
    assert any(_is_tracking(name) for name in importers)  # the MLflow imports were read
    assert not mlflow_importers(project), f"MLflow outside tracking: {mlflow_importers(project)}"


def test_modules_are_short_or_say_why(project):
    assert not long_modules(project), "over 300 lines, no reason given: " + ", ".join(
        long_modules(project)
    )


def test_no_function_local_import_dodges_a_circle(project):
    assert not circle_dodges(project), circle_dodges(project)


# --------------------------------------------------------------------------------------------
# The checkers, on a made-up package that breaks every rule.
# --------------------------------------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def broken(tmp_path) -> dict[str, Module]:
    long_body = "x = 1\n" * MAX_LINES
    _write(
        tmp_path,
        {
            "orchestrator/__init__.py": "",
            "orchestrator/a.py": "from orchestrator import b\n",
            "orchestrator/b.py": (
                "def later():\n    from orchestrator.a import thing  # it imports this module\n"
            ),
            "orchestrator/c.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from orchestrator.d import T\n",
            "orchestrator/d.py": "from . import c\nimport mlflow\n",
            "orchestrator/tracking.py": "from mlflow import MlflowClient\n",
            "orchestrator/long.py": long_body,
            # p.x -> q.y and q.z -> p.x: no module circle, but the folders p and q
            # import each other.
            "orchestrator/p/__init__.py": "",
            "orchestrator/p/x.py": "from orchestrator.q import y\n",
            "orchestrator/q/__init__.py": "",
            "orchestrator/q/y.py": "",
            "orchestrator/q/z.py": "from orchestrator.p.x import name\n",
            "orchestrator/long_ok.py": '"""Longer than 300 lines because it is a table."""\n'
            + long_body,
            "workloads/__init__.py": "",
            "workloads/loop.py": "def f():\n    import orchestrator.tracking\n",
        },
    )
    return modules_under(tmp_path)


def test_checkers_find_what_breaks_the_rules(broken):
    graph = import_graph(broken)
    # a -> b at module level, b -> a inside a function: one circle; c -> d only under
    # TYPE_CHECKING (never runs), so d -> c (a relative import) closes none.
    assert circles(graph) == [["orchestrator.a", "orchestrator.b"]]
    assert graph["orchestrator.d"] == {"orchestrator.c"}
    assert folder_circles(broken) == [
        ["orchestrator.a", "orchestrator.b"],
        ["orchestrator.p", "orchestrator.q"],
    ]
    assert workloads_importing_orchestrator(broken) == [
        "workloads.loop:2 imports orchestrator.tracking"
    ]
    assert mlflow_importers(broken) == ["orchestrator.d"]
    assert [line.split(":")[0] for line in long_modules(broken)] == ["orchestrator/long.py"]
    assert circle_dodges(broken) == [
        "orchestrator.b:2 (from orchestrator.a import thing  # it imports this module)"
    ]
