"""Each layer only looks down, and no two modules import each other: checked on the source (every import statement,
lazy ones inside functions too)."""
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


# ---- the whole package: every module on a layer, imports only on its own layer or below, no import cycle ----------
# lowest first; a module belongs to the layer of its longest matching prefix (relative to ddit_export)
LAYERS = (
    ("base", ("errors", "fsutil", "shapes", "settings", "parsing", "flops", "bundle", "plan", "images", "video_io",
              "schedule", "models.vocab", "training")),
    ("models", ("models",)),
    ("runtime", ("runtime",)),
    ("api", ("api",)),  # the Python API: generate_images, build_settings (runtime + models)
    ("data", ("zoo", "zoo.scenes", "zoo.clips")),  # the procedural training data the evaluation also reads
    ("quality", ("quality",)),
    ("adapt", ("adapt",)),
    ("trainers", ("zoo.train", "zoo.train_wan", "zoo.grow")),
    ("export", ("export",)),
    ("tools", ("bench", "pareto", "pareto_report", "pareto_replay", "peers", "resolution")),
    ("serve", ("serve", "client")),
    ("cli", ("commands", "cli", "cli_options", "__main__")),
)


def layer_of(module: str) -> int | None:
    rel = module[len("ddit_export."):] if module.startswith("ddit_export.") else ""
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (rel == p or rel.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    return None if best is None else best[0]


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (an imported name resolves to the longest module prefix)."""
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for mod, path in files.items():
        out = set()
        for _, imp in imports(path):
            target = imp
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target not in (mod, "ddit_export"):
                out.add(target)
        graph[mod] = out
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, targets in sorted(graph.items()):
        if mod == "ddit_export":
            continue
        for t in sorted(targets):
            if layer_of(t) > layer_of(mod):
                bad.append(f"{mod} ({LAYERS[layer_of(mod)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_is_on_a_layer():
    assert [m for m in import_graph() if m != "ddit_export" and layer_of(m) is None] == []


def test_no_module_imports_one_on_a_higher_layer():
    assert upward_imports(import_graph()) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_checks_see_what_they_check():
    """Both checks fail on the shapes of the loops they were written against (wave 2's tree had all of these)."""
    loops = {"ddit_export.runtime.pipeline": {"ddit_export.runtime.pipeline_wan"},
             "ddit_export.runtime.pipeline_wan": {"ddit_export.runtime.pipeline"},
             "ddit_export.schedule.ddit": {"ddit_export.schedule.probe"},
             "ddit_export.schedule.probe": {"ddit_export.schedule.ddit"}}
    assert cycles(loops) == [["ddit_export.runtime.pipeline", "ddit_export.runtime.pipeline_wan"],
                             ["ddit_export.schedule.ddit", "ddit_export.schedule.probe"]]
    against = {"ddit_export.models.registry": {"ddit_export.zoo.clips"},
               "ddit_export.serve.schemas": {"ddit_export.cli"},
               "ddit_export.adapt.train": {"ddit_export.zoo.train"}}
    assert len(upward_imports(against)) == 3
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]  # longer loops too


def test_no_module_over_450_lines():
    """Modules a newcomer can read (issue 24): split along a seam before one grows past 450 lines."""
    long = {str(p.relative_to(PKG.parent)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}
