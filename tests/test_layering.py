"""The package's layering, read from the imports of every module under src/explainrec (function-level ones too):
cli -> api -> demo -> bench/serve/rate -> methods -> modules -> metrics -> llm/train -> config/data -> io, no import
back up; method folders side by side (none imports a sibling, nothing outside methods/ imports one); no cycles."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# top to bottom: a module may import its own layer and the ones below it
LAYERS = (
    {"cli", "cli_boundary"},
    {"api"},
    {"demo"},
    {"bench", "serve", "rate"},
    {"methods"},
    {"modules"},
    {"metrics", "analysis"},
    {"llm", "training", "folders"},
    {"config", "data"},
    {"io", "interrupt", "version"},
)


def _modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "explainrec").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        found[name] = path
    return found


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """The explainrec modules ``name`` imports; ``from pkg import sub`` counts as importing ``pkg.sub``, and
    ``from explainrec import __version__`` as importing the version constant (not the public API)."""
    out = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("explainrec"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in MODULES:
                    out.add(sub)
                elif node.module == "explainrec" and alias.name == "__version__":
                    out.add("explainrec.version")
                else:
                    out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("explainrec"))
    out.discard(name)
    return out


GRAPH = {name: _imports(name) for name in MODULES}


def _part(module: str) -> str:
    parts = module.split(".")
    return "api" if len(parts) == 1 else parts[1]


def _layer(module: str) -> int:
    part = _part(module)
    for i, layer in enumerate(LAYERS):
        if part in layer:
            return i
    raise AssertionError(f"{module}: its part {part!r} is in no layer of tests/test_layering.py; add it")


def _method_folder(module: str) -> str | None:
    """``gavamoe`` for ``explainrec.methods.gavamoe.recipe``; None for the generic modules of methods/."""
    parts = module.split(".")
    if len(parts) >= 3 and parts[1] == "methods" and (SRC / Path(*parts[:3])).is_dir():
        return parts[2]
    return None


def test_no_import_goes_up_a_layer():
    upward = [f"{a} -> {b}" for a, targets in GRAPH.items() for b in targets if _layer(b) < _layer(a)]
    assert not upward, "\n".join(upward)


def test_method_folders_import_no_sibling_and_nothing_else_imports_a_method():
    found = []
    for a, targets in GRAPH.items():
        for b in targets:
            folder = _method_folder(b)
            if folder is not None and _method_folder(a) != folder:
                found.append(f"{a} -> {b}")
    assert not found, "\n".join(found)


def test_no_import_cycles():
    """Tarjan's strongly connected components over the module graph: every one must be a single module."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in MODULES:
                continue
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
                cycles.append(sorted(component))

    for v in MODULES:
        if v not in index:
            visit(v)
    assert not cycles, cycles


@pytest.mark.parametrize("module", ["explainrec.methods.mmp_refer.explainer"])
def test_the_checks_see_function_level_imports(module):
    """The explainer imports its prompt inside a function: the graph must hold that edge, or the cycle test is blind."""
    assert "explainrec.methods.mmp_refer.prompting" in GRAPH[module]


# the generic layers that look methods up and never name one (the demo and the method registry name them by design)
GENERIC = ("explainrec.cli", "explainrec.api", "explainrec.methods.base", "explainrec.bench", "explainrec.serve")


def _string_constants(path: Path) -> list[tuple[int, str]]:
    """String literals that are not docstrings, with their line."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_no_generic_layer_names_a_trained_method():
    """The CLI, the API, the base contract, the bench and the server find methods through the registry: no string in
    their code is a trained method's name (a comparison such as ``method == "gavamoe"`` would be one), nor names one
    in its help. The untrained baseline may be named as the default of ``--method``."""
    from explainrec.methods import registry

    names = {n for n in registry.names() if registry.get(n).trains} - {"recommender"}  # also a plain English word
    found = []
    for module, path in MODULES.items():
        if not module.startswith(GENERIC):
            continue
        for line, text in _string_constants(path):
            words = set(re.findall(r"[a-z][a-z0-9-]*", text.lower()))
            found += [f"{path.relative_to(SRC)}:{line}: {n!r}" for n in names if n in words]
    assert not found, "\n".join(found)


def test_every_registry_entry_loads_without_torch():
    """Listing the methods and their settings (``explainrec methods``, the server's API schema built from every
    method's ``row_fields``) reads the entries, so an entry's module imports torch only inside what trains or loads."""
    import subprocess
    import sys

    code = ("import sys; from explainrec.methods import registry; registry.all_methods(); "
            "import explainrec.serve.schemas; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
