"""The package's rooms, read from its source with ast (nothing is imported): no import circle among
cascade's modules, no arrow from a lower room up to a higher one, and nothing under cascade/
importing the repository's benchmarks/ or tests/ (an installed cascade has neither).

Every import statement counts, wherever it stands: at module level, inside a function (a
deferred import runs all the same, only later) or under ``if TYPE_CHECKING``; so a circle cannot
hide behind a deferred import. An import names one module: ``import a.b`` names ``a.b``, and
``from p import x`` names ``p.x`` when that is a module, else ``p``. The packages above a module
(``cascade.model`` for ``cascade.model.presets``), which Python runs first, are not counted: that
is how packages work, not an arrow of ours.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cascade"
OUTSIDE_THE_PACKAGE = ("benchmarks", "tests")  # the repository's, not installed with cascade

# What each lower room may import from the rest of cascade (README, Architecture: "Rooms and
# doors"). The model knows no schedules, the toy world builds on the model, the backend imports
# nothing above it.
ROOMS = {
    "cascade.schedule": set(),
    "cascade.sampling": set(),
    "cascade.model": {"cascade.sampling"},
    "cascade.toy": {"cascade.model", "cascade.sampling"},
    "cascade.backend": {"cascade.schedule"},
}


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def named_imports(path: Path, package: Path, modules: set[str]) -> set[str]:
    """The absolute names of the modules every import statement in ``path`` names."""
    here = module_name(path, package)
    # what a relative import is relative to: a package's own name, a module's package
    anchor = here.split(".") if path.name == "__init__.py" else here.split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join([*anchor[:len(anchor) - node.level + 1], *([node.module] if node.module else [])]) \
                if node.level else node.module
            for alias in node.names:
                names.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return names


def import_graph(package: Path) -> dict[str, set[str]]:
    """Every module of ``package`` -> the names its imports name (outside the package included)."""
    paths = {module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    return {name: named_imports(path, package, set(paths)) - {name} for name, path in paths.items()}


def within(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Only the arrows between the package's own modules."""
    return {name: targets & graph.keys() for name, targets in graph.items()}


def circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (its modules, the first repeated at the end), or None."""
    try:
        graphlib.TopologicalSorter(within(graph)).prepare()
    except graphlib.CycleError as error:
        return error.args[1]
    return None


def room_of(module: str) -> str | None:
    return next((room for room in ROOMS if module == room or module.startswith(room + ".")), None)


def upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a lower room to a module of cascade outside what that room may import."""
    arrows = []
    for name, targets in within(graph).items():
        room = room_of(name)
        if room is None:
            continue
        allowed = {room, *ROOMS[room]}
        arrows += [f"{name} -> {target}" for target in sorted(targets)
                   if not any(target == a or target.startswith(a + ".") for a in allowed)]
    return arrows


def imports_from_outside(graph: dict[str, set[str]]) -> list[str]:
    return [f"{name} -> {target}" for name, targets in graph.items() for target in sorted(targets)
            if target.split(".")[0] in OUTSIDE_THE_PACKAGE]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(PACKAGE)


def test_the_graph_is_read_from_every_module_and_its_deferred_imports(graph):
    """The reader itself: relative imports resolved, submodules told apart from names, deferred
    imports counted (the CLI's commands import their modules inside functions)."""
    assert {"cascade", "cascade.service", "cascade.model", "cascade.model.presets", "cascade.__main__"} <= graph.keys()
    assert {"cascade.model.transformer"} <= graph["cascade.model"]  # from .transformer import ...
    assert {"cascade.metrics", "cascade.backend", "cascade.model.presets"} <= graph["cascade.service"]
    assert {"cascade.service", "cascade.bench", "cascade.model.convert"} <= graph["cascade.__main__"]  # deferred
    assert "torch" in graph["cascade.model.transformer"]


def test_a_circle_through_a_deferred_import_is_found(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("def f():\n    from . import high  # deferred\n")
    (package / "high.py").write_text("from .low import f\n")
    found = circle(import_graph(package))
    assert found is not None and set(found) == {"pkg.low", "pkg.high"}


def test_no_module_of_cascade_imports_another_in_a_circle(graph):
    assert circle(graph) is None


def test_no_lower_room_imports_a_room_above_it(graph):
    """The model side imports nothing above it (neither the service nor the toy world); the toy
    world stays below the service (its evaluation is a caller, ``cascade/evaluate.py``)."""
    assert upward_arrows(graph) == []


def test_nothing_under_cascade_imports_the_repositorys_benchmarks_or_tests(graph):
    assert imports_from_outside(graph) == []
