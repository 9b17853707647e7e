"""The shape of the package a newcomer relies on: imports run one way and modules stay small.

The README ("Where things live") promises ``cli -> analysis -> train/deploy -> methods/trackers ->
core``. These tests read the import statements of every module (without importing them), so a change
that points an arrow upwards, closes a loop, or grows a module past the size a reader can hold fails
here, not in review.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kdcompress"
MAX_LINES = 400

# Top-level units from the top of the stack down; a unit may import only units of a lower layer.
# Everything not named here is core, which may import only core (and no loops, checked below).
LAYERS: list[set[str]] = [
    {"__main__"},
    {"cli"},
    {"analysis"},
    {"train", "deploy"},
    {"methods", "trackers"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's own modules that ``name`` imports, lazily or not.

    ``from pkg import sub`` counts as an import of ``pkg.sub`` alone: that is the idiom for a
    submodule inside its own package, and Python resolves it without running ``pkg`` again.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names} & modules.keys()
            found.update(submodules or {base})
    return {target for target in found if target in modules and target != name}


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_of(module: str) -> int:
    for depth, units in enumerate(LAYERS):
        if unit(module) in units:
            return depth
    return len(LAYERS)


def test_imports_point_down_the_layers() -> None:
    core = len(LAYERS)
    wrong = [
        f"{source} -> {target}"
        for source, targets in import_graph().items()
        for target in targets
        if unit(source) != unit(target)
        and layer_of(target) <= layer_of(source)
        and not layer_of(source) == layer_of(target) == core
    ]
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(wrong)


def test_no_import_loops() -> None:
    graph = import_graph()
    state: dict[str, str] = {}
    loops: list[str] = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                loops.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not loops, "import loops:\n" + "\n".join(loops)


def test_modules_stay_small() -> None:
    long = {
        module_name(path): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The graph is built from source text; a planted upward import must show up in it."""
    modules = {"kdcompress.methods.planted": tmp_path / "planted.py", "kdcompress.train": PACKAGE}
    (tmp_path / "planted.py").write_text("def late():\n    from kdcompress.train import run\n")
    found = imported_modules("kdcompress.methods.planted", tmp_path / "planted.py", modules)
    assert found == {"kdcompress.train"}
    assert layer_of("kdcompress.train") < layer_of("kdcompress.methods.planted")
