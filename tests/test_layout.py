"""The package's import graph (docs/architecture.md): no cycle, and no module imports from a layer above its own.

Function-local imports count: a cycle hidden inside a function is still a cycle."""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "spikesearch"

# Lowest first. A module may import its own layer (without a cycle) or any layer below.
LAYERS = [
    {"core"},
    {"data"},
    {"runs"},
    {"measure"},
    {"train"},
    {"proxies"},
    {"snasnet", "dhs", "convert"},
    {"nasbench"},
    {"search"},
    {"export"},
    {"cli"},
    {"__init__", "__main__"},
]
# The package root may hold only these modules besides the role and pillar packages.
ROOT_MODULES = {"__init__", "__main__", "runs"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def layer(module: str) -> int:
    top = module.split(".")[0]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module} belongs to no layer of tests/test_layout.py: add its package to LAYERS")


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The spikesearch modules ``path`` imports, as dotted names below the package."""
    name = module_name(path)
    is_pkg = path.name == "__init__.py"
    package = name.split(".") if is_pkg and name != "__init__" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("spikesearch"):
                target = node.module.removeprefix("spikesearch").lstrip(".")
            else:
                continue
            candidates = [f"{target}.{a.name}".lstrip(".") for a in node.names] + [target]
        elif isinstance(node, ast.Import):
            candidates = [a.name.removeprefix("spikesearch.") for a in node.names if a.name.startswith("spikesearch.")]
        else:
            continue
        for c in candidates:
            if c in modules:
                found.add(c)
                break
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    return {m: imports_of(p, set(files)) for m, p in files.items()}


def test_no_module_imports_from_a_layer_above():
    upward = [f"{m} -> {d}" for m, deps in graph().items() for d in deps if layer(d) > layer(m)]
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_import_graph_has_no_cycle():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g[m]):
            if state.get(d) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_package_root_holds_few_modules():
    root = {p.stem for p in SRC.glob("*.py")}
    assert root <= ROOT_MODULES, f"modules at the package root beyond {sorted(ROOT_MODULES)}: {sorted(root - ROOT_MODULES)}"


def test_graph_walk_sees_every_kind_of_import():
    """Relative, top-level and function-local imports all reach the graph (else the checks above pass empty)."""
    g = graph()
    assert "core.errors" in g["core.neurons"]                  # from .errors import ...
    assert "runs" in g["train.trainer"]                         # from ..runs import ...
    assert {"snasnet.network", "cli.args"} <= g["cli.search"]   # function-local and top-level
    assert layer("cli.main") > layer("core.neurons")
