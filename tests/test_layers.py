"""The source tree's imports run down the layers and never in a circle (read with ast: nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("protocol", "hal", "policies", "edge", "cloud", "fleetloop")

# What each room may import besides itself, from the lowest layer up. The longest matching prefix rules.
MAY_IMPORT: dict[str, set[str]] = {
    "protocol": set(),
    "hal": {"protocol"},
    "policies": {"hal", "protocol"},
    "edge": {"hal", "policies", "protocol"},
    "cloud": set(),
    "cloud.security": {"protocol"},  # whether a listening address is loopback is the wire's knowledge
    "cloud.data": {"hal", "policies", "protocol"},
    "cloud.serving": {"cloud.data", "hal", "policies", "protocol"},
    "cloud.learning": {"cloud.data", "cloud.serving", "hal", "policies", "protocol"},
    "cloud.gateway": {"cloud.data", "cloud.security", "cloud.serving", "hal", "policies", "protocol"},
    "cloud.channels": {"cloud.gateway", "cloud.data", "cloud.security", "cloud.serving", "hal", "policies", "protocol"},
    "fleetloop": {"cloud", "edge", "hal", "policies", "protocol"},
}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def source_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if not path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                modules[module_name(path)] = path
    return modules


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Project modules ``path`` imports anywhere in its body (inside functions too): ``from a import b`` counts
    ``a.b`` when that is a module, else ``a``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
                if isinstance(node, ast.ImportFrom):
                    break  # the most specific module is enough
    return found


def room(module: str) -> str:
    parts = module.split(".")
    for size in range(len(parts), 0, -1):
        if ".".join(parts[:size]) in MAY_IMPORT:
            return ".".join(parts[:size])
    raise AssertionError(f"{module} is in no room of MAY_IMPORT")


def import_graph() -> dict[str, set[str]]:
    modules = source_modules()
    known = set(modules)
    return {name: imported_modules(path, known) - {name} for name, path in modules.items()}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, deps in sorted(graph.items()):
        home = room(module)
        allowed = MAY_IMPORT[home]
        for dep in sorted(deps):
            there = room(dep)
            if there != home and not any(there == a or there.startswith(a + ".") for a in allowed):
                wrong.append(f"{module} imports {dep} ({home} may import {sorted(allowed) or 'nothing'})")
    return wrong


def import_circles(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_imports_run_down_the_layers() -> None:
    wrong = layer_violations(import_graph())
    assert not wrong, "imports up or across the layers:\n" + "\n".join(wrong)


def test_no_import_circles() -> None:
    cycles = import_circles(import_graph())
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """An edge module importing the cloud is found, and so is a circle through a function-level import."""
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from a import x\n")
    graph = {name: imported_modules(tmp_path / f"{name}.py", {"a", "b"}) for name in ("a", "b")}
    assert graph == {"a": {"b"}, "b": {"a"}}
    assert import_circles(graph) == ["a -> b -> a"]
    assert layer_violations({"edge.agent": {"cloud.data.store"}}) == [
        "edge.agent imports cloud.data.store (edge may import ['hal', 'policies', 'protocol'])"
    ]
    assert layer_violations({"fleetloop.cli": {"cloud.data.store"}, "cloud.data.store": {"protocol.steps"}}) == []
