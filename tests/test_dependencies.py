"""Every third-party module the package, its scripts or its tests import is declared in pyproject.toml (core or an
extra): a fresh virtual environment with ``pip install -e ".[dev]"`` then has everything the tests need."""
import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# import name -> the distributions that provide it (any one declared is enough)
PROVIDERS = {
    "PIL": ("pillow",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "tokenizers": ("tokenizers", "transformers"),  # transformers requires tokenizers
    "pytest_benchmark": ("pytest-benchmark",),
    "yaml": ("pyyaml",),
}


def declared() -> set:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].strip().lower().replace("_", "-") for r in reqs}


def third_party_imports() -> dict:
    """top-level module -> first file importing it, over every import statement (lazy ones too)."""
    files = [ROOT / "cli.py", *sorted((ROOT / "ddit_export").rglob("*.py")), *sorted((ROOT / "tests").rglob("*.py")),
             *sorted((ROOT / "scripts").rglob("*.py"))]
    # the package, the tests, and the scripts themselves (a script may import another one beside it)
    first_party = {"ddit_export", "tests"} | {f.stem for f in (ROOT / "scripts").glob("*.py")}
    found = {}
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in first_party:
                    found.setdefault(top, str(f.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_declared():
    deps = declared()
    missing = {mod: where for mod, where in third_party_imports().items()
               if not any(d in deps for d in PROVIDERS.get(mod, (mod.lower().replace("_", "-"),)))}
    assert missing == {}, f"imported but declared nowhere in pyproject.toml: {missing}"


def test_the_scan_sees_lazy_imports():
    assert {"torch", "onnxruntime", "tensorrt", "polygraphy"} <= set(third_party_imports())
