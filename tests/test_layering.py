"""Each layer only looks down: checked on the source (every import statement, lazy ones inside functions too)."""
import ast
from pathlib import Path

import pytest

import ddit_export

PKG = Path(ddit_export.__file__).parent

# layer (package path) -> modules it must never import (a prefix covers its submodules)
FORBIDDEN = {
    "runtime": ("ddit_export.export", "ddit_export.adapt", "ddit_export.zoo.train", "ddit_export.zoo.scenes",
                "ddit_export.quality"),
    "models": ("ddit_export.runtime", "ddit_export.export", "ddit_export.adapt", "ddit_export.quality"),
    # the adapter trainer drives the runtime's sampler; it never needs the exporter or the evaluation
    "adapt": ("ddit_export.export", "ddit_export.quality", "ddit_export.cli", "ddit_export.commands"),
    "schedule": ("ddit_export.runtime", "ddit_export.export", "ddit_export.models", "torch", "diffusers"),
    # the format and the conversions both sides share sit below both
    "bundle.py": ("ddit_export.runtime", "ddit_export.export", "ddit_export.models"),
    "plan.py": ("ddit_export.runtime", "ddit_export.export", "ddit_export.models"),
    "images.py": ("ddit_export.runtime", "ddit_export.export", "ddit_export.models"),
    "video_io.py": ("ddit_export.runtime", "ddit_export.export", "ddit_export.models"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path):
    """(line, absolute module) of every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = module_name(path).split(".")
    if path.name != "__init__.py":
        pkg = pkg[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(pkg[:len(pkg) - node.level + 1]) if node.level else ""
            mod = ".".join(p for p in (base, node.module) if p)
            yield node.lineno, mod
            for a in node.names:  # `from .. import bundle` imports the module ddit_export.bundle
                yield node.lineno, f"{mod}.{a.name}"


def violations(layer: str) -> list:
    root = PKG / layer
    files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
    bad = []
    for f in files:
        for line, mod in imports(f):
            for banned in FORBIDDEN[layer]:
                if mod == banned or mod.startswith(banned + "."):
                    bad.append(f"{f.relative_to(PKG.parent)}:{line} imports {mod}")
    return bad


def test_relative_imports_are_resolved():
    found = {m for _, m in imports(PKG / "runtime" / "backends" / "onnxruntime.py")}
    assert "ddit_export.bundle" in found and "ddit_export.runtime.backends.base" in found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_only_looks_down(layer):
    assert violations(layer) == []
