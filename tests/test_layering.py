"""Package layering: no package of ``sgrec_ray`` imports, directly or in a circle, one that
imports it back.

Why a test: cycles hid for months behind imports placed inside functions, which run late enough
that Python never notices the circle, until an innocent reorder breaks ``import`` for everyone.
So the graph here is built from every ``sgrec_ray`` import, at module level and inside
functions alike, and must be acyclic. An import inside a function is allowed only with a
``# lazy: <why>`` comment on its line or the line above: an optional extra (vLLM), or a command
that loads its stage only when run (the CLI stays light). Imports under ``if TYPE_CHECKING:`` are
left out: they never run, and type-only references are how two layers name each other's types.

A node is a first-level name under ``sgrec_ray``: a subpackage (``sgrec_ray.rl``) or a module
(``sgrec_ray.config``). The AST is read, nothing is imported.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "sgrec_ray"
LAZY = "# lazy:"


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported sgrec_ray module, dotted
    line: int
    in_function: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def node(module: str) -> str:
    """``sgrec_ray.rl.a2po`` → ``rl``; ``sgrec_ray.config`` → ``config``; the root → ``sgrec_ray``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(stmt: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if isinstance(stmt, ast.Import):
        names = [a.name for a in stmt.names]
    elif stmt.level:  # relative: resolve against the importing module's package
        base = module.split(".")
        base = base if is_package else base[:-1]
        base = base[: len(base) - (stmt.level - 1)]
        names = [".".join([*base, stmt.module] if stmt.module else base)]
    else:
        names = [stmt.module or ""]
    if isinstance(stmt, ast.ImportFrom) and names == ["sgrec_ray"]:  # from sgrec_ray import storage
        names = [f"sgrec_ray.{a.name}" for a in stmt.names]
    return [n for n in names if n == "sgrec_ray" or n.startswith("sgrec_ray.")]


def imports(path: Path, module: str | None = None) -> Iterator[Import]:
    """Every runtime ``sgrec_ray`` import of one file (``TYPE_CHECKING`` blocks skipped);
    ``module``: its dotted name, by default from its place in the repository."""
    module = module or module_name(path)
    is_package = path.name == "__init__.py"

    def walk(tree: ast.AST, in_function: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(tree):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.orelse:
                    yield from walk(stmt, in_function)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                for target in _targets(child, module, is_package):
                    yield Import(module, target, child.lineno, in_function)
            inner = in_function or isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
            )
            yield from walk(child, inner)

    yield from walk(ast.parse(path.read_text()), False)


def all_imports() -> list[Import]:
    return [i for path in sorted(PACKAGE.rglob("*.py")) for i in imports(path)]


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(edges.get(v, ())):
            if state.get(w) == 1:
                return [*path[path.index(w) :], w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = 2
        path.pop()
        return None

    for v in sorted(edges):
        if v not in state and (found := visit(v)):
            return found
    return None


def package_graph(found: list[Import]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for i in found:
        a, b = node(i.module), node(i.target)
        if a != b and b != "sgrec_ray":
            edges.setdefault(a, set()).add(b)
    return edges


def test_package_graph_has_no_cycle():
    found = all_imports()
    assert len(found) > 100  # the walk saw the package, not an empty folder
    cycle = find_cycle(package_graph(found))
    if cycle:
        hops = [
            f"{i.module}:{i.line} imports {i.target}"
            for a, b in itertools.pairwise(cycle)
            for i in found
            if node(i.module) == a and node(i.target) == b
        ]
        raise AssertionError(f"package cycle {' → '.join(cycle)}:\n  " + "\n  ".join(hops))


def _says_why(lines: list[str], at: int) -> bool:
    """A ``# lazy:`` comment on the import's line, or above it in the same block of imports and
    comments (one comment can explain a group of imports)."""
    for n in range(at, -1, -1):
        line = lines[n].strip()
        if LAZY in line:
            return True
        block = line.startswith(("from ", "import ", "#")) or line.endswith(",") or line == ")"
        if n != at and not block:
            return False
    return False


def test_imports_inside_functions_say_why():
    lines: dict[str, list[str]] = {}
    unexplained = []
    for i in all_imports():
        if not i.in_function or node(i.module) == node(i.target):
            continue
        path = REPO / (i.module.replace(".", "/") + ".py")
        if not path.exists():
            path = REPO / i.module.replace(".", "/") / "__init__.py"
        text = lines.setdefault(i.module, path.read_text().splitlines())
        if not _says_why(text, i.line - 1):
            unexplained.append(f"{i.module}:{i.line} imports {i.target}")
    assert not unexplained, (
        f"cross-package imports inside functions without a `{LAZY} <why>` comment (move them to "
        "the top of the module; keep them lazy only for an optional extra or a CLI command):\n  "
        + "\n  ".join(unexplained)
    )


def test_the_walk_sees_cycles_and_lazy_imports(tmp_path: Path):
    """The checker itself: a two-package circle is found, and a function-level import is told
    from a module-level one (else the tests above could pass on anything)."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None
    src = tmp_path / "mod.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "from sgrec_ray.config import Config\n"
        "if TYPE_CHECKING:\n    from sgrec_ray.rl import a2po\n"
        "def f():\n    from sgrec_ray.eval import stage  # lazy: test\n"
    )
    got = {(i.target, i.in_function) for i in imports(src, "sgrec_ray.probe")}
    assert got == {("sgrec_ray.config", False), ("sgrec_ray.eval", True)}
