"""No import cycles inside oel: each module can be imported first, in any order.

The graph is read from the source (every `import` / `from ... import`, lazy ones inside
functions too), so a cycle is caught even when today's import order happens to work.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path, mods: dict[str, Path]) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            target = _resolve(name, mods)
            # a module's own parent packages run first whatever imports it: not a dependency edge
            if target and target != module and not module.startswith(target + "."):
                found.add(target)
    return found


def test_no_import_cycles() -> None:
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_every_module_imports() -> None:
    for module in sorted(_modules()):
        importlib.import_module(module)


# ---- the layers: which package may import which ------------------------------------------------

STAGES = ("oel.collect", "oel.extract", "oel.consolidate", "oel.evaluate")
"""The loop's stages: each imports the shared layer below it, another stage only through its face."""
COLLECT_USERS = ("oel.collect", "oel.loop")
"""The only packages that may import the collect stage: itself and the round orchestrator."""
ENTRY_POINTS = ("oel.cli", "oel.__main__")
"""The command at the top: nothing below imports it (it imports each package's `cli` by name)."""


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, mods) for m, p in mods.items()}


def _package(module: str) -> str:
    """oel.extract.store -> oel.extract; a top-level module (oel.config) is its own unit."""
    return ".".join(module.split(".")[:2])


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_no_import_cycles_between_packages() -> None:
    packages: dict[str, set[str]] = {}
    for module, targets in _graph().items():
        edges = packages.setdefault(_package(module), set())
        edges.update(_package(t) for t in targets if _package(t) != _package(module))
    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in packages.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = sorted(p for p in packages if p in reachable(p))
    assert not cycles, f"packages that import themselves through others: {cycles}"


def test_nothing_below_the_entry_point_imports_it() -> None:
    offenders = sorted(m for m, targets in _graph().items() if m not in ENTRY_POINTS
                       and any(t in ENTRY_POINTS for t in targets))
    assert not offenders, f"modules importing the `oel` command (use oel.commands): {offenders}"


def test_only_collect_and_loop_import_the_collect_stage() -> None:
    offenders = sorted(f"{m} -> {t}" for m, targets in _graph().items() for t in targets
                       if _inside(t, "oel.collect") and not any(_inside(m, p) for p in COLLECT_USERS)
                       and m not in ENTRY_POINTS)
    assert not offenders, f"the shared layer is oel.backends / oel.rollout / oel.serving, not collect: {offenders}"


def test_a_stage_uses_another_stage_only_through_its_package_face() -> None:
    offenders = sorted(f"{m} -> {t}" for m, targets in _graph().items() for t in targets
                       for stage in STAGES if _inside(t, stage) and t != stage
                       and any(_inside(m, s) for s in STAGES if s != stage))
    assert not offenders, f"stage internals imported by another stage: {offenders}"
