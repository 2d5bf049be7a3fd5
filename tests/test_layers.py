"""The package's import graph: no cycles, and layers only look down (see DESIGN: data -> models ->
engine -> experiments). Imports inside functions count: a lazy import is still a dependency."""
import ast
from pathlib import Path

import fsslib

ROOT = Path(fsslib.__file__).parent
LAYERS = ["runtime", "reference", "data", "models", "engine", "analysis", "experiments"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:  # `from .pkg import submodule` depends on the submodule
                    candidate = f"{base}.{alias.name}"
                    targets.add(candidate if candidate in modules else base)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _reaches(graph, start, goal) -> bool:
    seen, stack = set(), [start]
    while stack:
        node = stack.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            stack.extend(graph.get(node, ()))
    return False


def _package_free(graph):
    """The graph without package ``__init__`` re-export edges (a package importing its own children)."""
    return {m: {t for t in ts if not (t.startswith(m + "."))} for m, ts in graph.items()}


def test_no_import_cycle_between_modules():
    graph = _package_free(import_graph())
    cycles = sorted({tuple(sorted((a, b))) for a, targets in graph.items() for b in targets
                     if _reaches(graph, b, a) and not (a.startswith(b + ".") or b.startswith(a + "."))})
    assert not cycles, f"import cycles: {cycles}"




def test_layers_only_look_down():
    def layer(module: str) -> int | None:
        parts = module.split(".")
        return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None

    upward = sorted((a, b) for a, targets in import_graph().items() for b in targets
                    if layer(a) is not None and layer(b) is not None and layer(b) > layer(a))
    assert not upward, f"imports from a higher layer: {upward}"
