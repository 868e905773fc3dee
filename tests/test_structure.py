"""The library's import structure: no circles between modules or between rooms (a subpackage or a
top-level module), and no orchestration imports. Every import counts, those inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "vimi"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _imports(name: str, path: Path) -> list[str]:
    """Every module name an import statement of this file names (absolute, relative resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return names


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for target in _imports(name, path):
            while target and target not in mods:  # `from vimi.x import f` names vimi.x.f: climb to vimi.x
                target = target.rpartition(".")[0]
            if target and target not in (name, "vimi"):
                graph[name].add(target)
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _room(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_the_graph_sees_imports_inside_functions():
    graph = _graph()
    assert "vimi.models.encoder" in graph["vimi.data.clips"]  # a function-level import
    assert "vimi.io.video" in graph["vimi.models.pipeline"]
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle_between_modules():
    assert _circles(_graph()) == []


def test_no_import_circle_between_rooms():
    rooms: dict[str, set[str]] = {}
    for module, targets in _graph().items():
        rooms.setdefault(_room(module), set()).update(_room(t) for t in targets if _room(t) != _room(module))
    assert _circles(rooms) == []


def test_the_library_never_imports_the_orchestrators():
    mods = _modules()
    offending = sorted(
        f"{name}: {target}"
        for name, path in mods.items()
        for target in _imports(name, path)
        if target.split(".")[0] in ("dagster", "dvc", "orchestration")
    )
    assert offending == []


def test_packages_export_their_api_lazily():
    """Each package's __all__ resolves to the objects of the modules that define them; importing a package
    imports none of them (vimi.world and vimi.retrieval stay free of torch until a model is used)."""
    import importlib
    import subprocess
    import sys

    packages = sorted(m for m, p in _modules().items() if p.name == "__init__.py")
    exported = 0
    for name in packages:
        package = importlib.import_module(name)
        for attr in getattr(package, "__all__", []):
            assert f"{name}.{attr}" not in _modules(), f"{name}.{attr} is a module: it would hide the export"
            value = getattr(package, attr)
            home = getattr(value, "__module__", None)
            if isinstance(home, str) and home.startswith("vimi."):  # a class or function: where it is defined
                assert getattr(importlib.import_module(home), attr) is value, (name, attr)
            exported += 1
    assert exported >= 40
    from vimi.models import ViMiPipeline
    from vimi.models.pipeline import ViMiPipeline as defined

    assert ViMiPipeline is defined
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, vimi, vimi.world, vimi.retrieval, vimi.models; print('torch' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"
