"""The layers you can see in the folders are the layers the imports obey: no lower layer imports a higher one,
no import cycles (also through imports inside functions), Ray only in the Ray backend, torch only under torch/.

Run alone: `.venv/bin/python -m pytest tests/test_architecture.py` (a second, it imports nothing of dfprep).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "dfprep"

BASE = {"dfprep", "errors"}  # dfprep/__init__.py (the version) and errors.py: anyone may import them
# Who may import whom, by top-level folder of dfprep/ (a layer may always import its own modules). The order
# low → high: errors < config < io < catalog < vision < jobs < runner < cli; torch/ and inspect/ sit beside
# it and depend only on config and io; the runner wires torch's Grad-CAM into the map job; nothing imports cli.
ALLOWED: dict[str, set[str]] = {
    "dfprep": set(),
    "errors": set(),
    "config": BASE,
    "io": BASE | {"config"},
    "catalog": BASE | {"config", "io"},
    "vision": BASE | {"config", "io", "catalog"},
    "jobs": BASE | {"config", "io", "catalog", "vision"},
    "torch": BASE | {"config", "io"},
    "inspect": BASE | {"config", "io"},
    "runner": BASE | {"config", "io", "catalog", "vision", "jobs", "torch"},
    "cli": BASE | {"config", "io", "catalog", "vision", "jobs", "torch", "inspect", "runner"},
    "__main__": BASE | {"cli"},
}
# Third-party packages confined to one place: module prefix → where it may be imported.
CONFINED = {"ray": ("dfprep.runner.pool",), "torch": ("dfprep.torch",), "torchvision": ("dfprep.torch",)}


@dataclass(frozen=True)
class Import:
    """One import statement's target, where it is, and whether it runs at module import or inside a function."""

    source: str
    target: str
    line: int
    in_function: bool


def module_name(path: Path, root: Path) -> str:
    """`dfprep/io/shards.py` → `dfprep.io.shards`; a package's __init__ is the package itself."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(node: ast.ImportFrom, source: str, is_package: bool) -> str:
    """The absolute module a `from … import` names (relative imports resolved against the importing module)."""
    if not node.level:
        return node.module or ""
    base = source.split(".") if is_package else source.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _function_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes that sit inside a function (they run when it is called, not at import)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside |= {id(child) for child in ast.walk(node) if isinstance(child, (ast.Import, ast.ImportFrom))}
    return inside


def module_imports(path: Path, source: str, modules: set[str]) -> list[Import]:
    """Every import in a file, at any depth; `from pkg import name` counts as pkg.name when that is a module."""
    tree = ast.parse(path.read_text(), str(path))
    in_function = _function_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, source, path.name == "__init__.py")
            targets = list(dict.fromkeys(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                                         for a in node.names))
        else:
            continue
        found += [Import(source, target, node.lineno, id(node) in in_function) for target in targets]
    return found


def import_graph(root: Path) -> dict[str, list[Import]]:
    """Module → its imports, for every .py file under the package folder `root`."""
    paths = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    return {name: module_imports(path, name, set(paths)) for name, path in paths.items()}


def layer(module: str) -> str:
    """The top-level folder (or file) of dfprep a module belongs to: `dfprep.io.shards` → io."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_violations(graph: dict[str, list[Import]]) -> list[str]:
    """Imports of dfprep modules that the layer table does not allow."""
    problems = []
    for source, imports in graph.items():
        for item in imports:
            if item.target.split(".")[0] != "dfprep":
                continue
            mine, theirs = layer(source), layer(item.target)
            if theirs != mine and theirs not in ALLOWED.get(mine, set()):
                problems.append(f"{source}:{item.line} imports {item.target} ({mine} may not import {theirs})")
    return problems


def confinement_violations(graph: dict[str, list[Import]]) -> list[str]:
    """Imports of Ray or torch outside the one place each is allowed."""
    problems = []
    for source, imports in graph.items():
        for item in imports:
            package = item.target.split(".")[0]
            homes = CONFINED.get(package)
            if homes and not any(source == home or source.startswith(f"{home}.") for home in homes):
                problems.append(f"{source}:{item.line} imports {item.target} (only {', '.join(homes)} may)")
    return problems


def _edges(graph: dict[str, list[Import]]) -> dict[str, set[str]]:
    """Module → the dfprep modules it imports (a package counts as its __init__)."""
    return {source: {i.target for i in imports if i.target in graph and i.target != source}
            for source, imports in graph.items()}


def import_cycles(graph: dict[str, list[Import]]) -> list[list[str]]:
    """Strongly connected groups of two or more modules (Tarjan), each sorted; [] when the graph is acyclic."""
    edges, index, low, stack, on_stack, cycles = _edges(graph), {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return cycles


# ---------------------------------------------------------------- the rules, on the real package


@pytest.fixture(scope="module")
def graph() -> dict[str, list[Import]]:
    return import_graph(PACKAGE_ROOT)


def test_every_module_sits_in_a_known_layer(graph):
    assert {layer(m) for m in graph} <= set(ALLOWED), sorted({layer(m) for m in graph} - set(ALLOWED))
    assert len(graph) > 50  # the checker really parsed the package


def test_no_lower_layer_imports_a_higher_one(graph):
    assert layer_violations(graph) == []


def test_no_import_cycles_not_even_inside_functions(graph):
    assert import_cycles(graph) == []


def test_ray_only_in_the_ray_backend_and_torch_only_under_torch(graph):
    assert confinement_violations(graph) == []
    ray_users = {i.source for imports in graph.values() for i in imports if i.target.split(".")[0] == "ray"}
    assert ray_users == {"dfprep.runner.pool"}  # and the backend really is where Ray is used


def test_fault_injection_is_one_call_site_not_a_parameter(graph):
    """$DFPREP_FAULT is read in runner/faults.py, called once by the runner; no production signature has `fault`."""
    callers = {i.source for imports in graph.values() for i in imports if i.target == "dfprep.runner.faults"}
    assert callers == {"dfprep.runner.run", "dfprep.runner.pool"}  # the call site, and the env pass-through
    for path in PACKAGE_ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [a.arg for a in node.args.args + node.args.kwonlyargs]
                assert "fault" not in names, f"{path}: {node.name} takes a fault hook"


# ---------------------------------------------------------------- the checker catches what it should


def _tree(root: Path, files: dict[str, str]) -> Path:
    """A synthetic dfprep package: {relative path: source}; every folder gets an __init__.py."""
    package = root / "dfprep"
    for relative, source in {"__init__.py": "", **files}.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        for folder in [path.parent, *path.parent.parents]:
            if folder == package.parent:
                break
            (folder / "__init__.py").touch()
        path.write_text(source)
    return package


def test_the_checker_finds_a_planted_layer_violation_and_a_confined_import(tmp_path):
    package = _tree(tmp_path, {
        "io/shards.py": "from dfprep.runner.run import extract_run\n",  # io → runner: upward
        "inspect/stats.py": "def f():\n    from dfprep.jobs import plan\n",  # inspect → jobs, inside a function
        "jobs/maps.py": "def g():\n    import ray\n    import torch.nn\n",  # Ray and torch outside their homes
        "runner/run.py": "from dfprep.io import shards\n",  # allowed
        "runner/pool.py": "import ray\n",  # allowed
        "jobs/plan.py": "",
    })
    graph = import_graph(package)
    problems = layer_violations(graph)
    assert len(problems) == 2
    assert problems[0].startswith("dfprep.inspect.stats:2 imports dfprep.jobs.plan (inspect may not import jobs)")
    assert problems[1].startswith("dfprep.io.shards:1 imports dfprep.runner.run (io may not import runner)")
    confined = confinement_violations(graph)
    assert [p.split(" (")[0] for p in confined] == ["dfprep.jobs.maps:2 imports ray", "dfprep.jobs.maps:3 imports torch.nn"]


def test_the_checker_finds_a_planted_cycle_through_a_function_level_import(tmp_path):
    package = _tree(tmp_path, {
        "runner/run.py": "from dfprep.runner.pool import ActorPool\n",
        "runner/pool.py": "def work():\n    from dfprep.runner import run\n",  # the cycle closes inside a function
        "runner/guard.py": "from . import pool\n",  # relative import, no cycle
        "jobs/a.py": "from dfprep.jobs.b import x\n",
        "jobs/b.py": "from dfprep.jobs.c import y\n",
        "jobs/c.py": "import dfprep.jobs.a\n",
    })
    graph = import_graph(package)
    assert import_cycles(graph) == [["dfprep.jobs.a", "dfprep.jobs.b", "dfprep.jobs.c"],
                                    ["dfprep.runner.pool", "dfprep.runner.run"]]
    assert [i.target for i in graph["dfprep.runner.guard"]] == ["dfprep.runner.pool"]
    assert graph["dfprep.runner.pool"][0].in_function


def test_the_checker_finds_a_cycle_through_a_package_init(tmp_path):
    package = _tree(tmp_path, {
        "config/__init__.py": "from dfprep.config.loader import load_config\n",
        "config/loader.py": "from dfprep.config import RANGES\n",  # a name of the package: its __init__
    })
    assert import_cycles(import_graph(package)) == [["dfprep.config", "dfprep.config.loader"]]
