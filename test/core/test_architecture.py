"""The layers of docs/ARCHITECTURE.md, checked on the source: no module of sharpdepth_core imports one of
a higher layer (function-level imports included), and sharpdepth_core never imports sharpdepth_ros."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "sharpdepth_core"
# the table of docs/ARCHITECTURE.md; a module may import its own layer or lower ones
LAYERS = {
    0: ["limits", "choices", "hub_ids", "devices", "files", "embedded"],
    1: ["normalization", "alignment", "gating", "preprocessing", "geometry", "metrics", "losses", "temporal"],
    2: ["images", "recordings", "synthetic", "small_scale", "visualize", "data"],
    3: ["models", "pipeline_config"],
    4: ["export", "engines", "speed"],
    5: ["pipeline", "training_config", "checkpoints", "trainer"],
    6: ["cli", "tiny"],
}
LAYER = {name: layer for layer, names in LAYERS.items() for name in names}


def _module(path: Path) -> str:
    """The layer key of a source file: its top-level name under sharpdepth_core (models/* is "models")."""
    return path.relative_to(CORE).parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    """The sharpdepth_core / sharpdepth_ros modules a file imports, as layer keys ("ros" for sharpdepth_ros)."""
    found = set()
    depth = len(path.relative_to(CORE).parts) - 1  # 0 in sharpdepth_core/, 1 in models/
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level - 1 > depth:
                continue
            inside = node.level - 1 < depth  # `from .x` inside models/ stays in models
            names = ["models"] if inside else ([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name.startswith("sharpdepth_ros"):
                found.add("ros")
            elif name.startswith("sharpdepth_core"):
                parts = name.split(".")
                found.add(parts[1] if len(parts) > 1 else "")
            elif node.__class__ is ast.ImportFrom and node.level:
                found.add(name)
    return found - {""}


def test_every_module_has_a_layer_and_imports_none_above_it():
    sources = [p for p in CORE.rglob("*.py") if "weights" not in p.parts and p != CORE / "__init__.py"]
    unplaced = sorted({_module(p) for p in sources} - set(LAYER))
    assert not unplaced, f"modules missing from docs/ARCHITECTURE.md's layers: {unplaced}"
    upward = []
    for path in sources:
        own = LAYER[_module(path)]
        for target in _imports(path):
            assert target != "ros", f"{path.relative_to(ROOT)} imports sharpdepth_ros"
            if target in LAYER and LAYER[target] > own:
                upward.append(f"{path.relative_to(ROOT)} (layer {own}) imports {target} (layer {LAYER[target]})")
    assert not upward, "\n".join(upward)


def test_the_architecture_page_lists_the_same_layers():
    page = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    for layer, names in LAYERS.items():
        row = next(line for line in page.splitlines() if line.startswith(f"| {layer}. "))
        for name in names:
            assert f"`{name}`" in row or (name == "models" and "`models/`" in row), f"{name} is not in layer {layer}'s row"
