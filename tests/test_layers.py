"""The package's import graph follows the data flow: no cycles, no import of a later stage by an earlier one.

The layers, bottom to top (a module may import its own layer and the layers below it, never one above):

0. ``errors``, ``schema``, ``version``, ``scratch``, ``interrupts``, ``prefetch``, ``datasets_internals``: the row
   contract and the plumbing every stage shares;
1. ``source``: raw rows; 2. ``tokenization``: documents; 3. ``engines``: move data for a transform (they never
   import the stages that define transforms); 4. ``pack``: the transform, keys and packers; 5. ``mixture``: the
   mixture plan and its card rules; 6. ``output``: the folder, card, validate, inspect, push; 7. ``train``:
   collators; 8. ``kd``: teacher caches (reuses output and train); 9. ``recipe``; 10. ``configure`` (recipe ->
   the stages' objects), ``describe`` (provenance, card, summary), ``recipe_reference`` (docs/recipes.md);
   11. ``run_splits``; 12. ``run``, ``mixture_run``: orchestration, and ``commands`` (repack, export over a
   prepared dataset's documents); 13. ``cli``, ``__main__`` and the package ``__init__``.

Function-local imports of hfprep modules hide cycles, so only ``hfprep.kd`` uses one (its trainer pulls in
transformers' Trainer, loaded on first use); the CLI imports each command's stage when it runs through one table
(``hfprep.cli.STAGE_FUNCTIONS``, checked in tests/test_cli.py). Every other dependency is imported at the top of
its module, where a reader sees it, except the optional or heavy ones of ``LOCAL_THIRD_PARTY``; each
function-local import says why in a comment on its line or the line above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import hfprep

LAYERS: list[set[str]] = [
    {"errors", "schema", "version", "scratch", "interrupts", "prefetch", "datasets_internals"},
    {"source"},
    {"tokenization"},
    {"engines"},
    {"pack"},
    {"mixture"},
    {"output"},
    {"train"},
    {"kd"},
    {"recipe"},
    {"configure", "describe", "recipe_reference"},
    {"run_splits"},
    {"run", "mixture_run", "commands"},
    {"cli", "__main__", "__init__"},
]
LOCAL_IMPORTS_ALLOWED = {"hfprep.kd"}
# Top-level packages a function may import for itself, and why; everything else is imported at module top.
LOCAL_THIRD_PARTY = {
    "torch": "heavy (seconds to import); only the training-side paths need it",
    "ray": "an optional extra (hfprep[ray])",
    "gigatoken": "the fast tokenizer backend, without a wheel on some platforms",
    "awkward": "comes with gigatoken and reads only gigatoken's results",
    "matplotlib": "heavy; only the card's plots need it",
    "transformers": "~0.35 s to import; only loading a tokenizer or rendering a chat template needs it (repack, "
    "export and validate load none)",
}

PACKAGE = Path(hfprep.__file__).parent


def _module_name(package: Path, path: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(package: Path, module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (package / rel.with_suffix(".py")).is_file() or (package / rel / "__init__.py").is_file()


def _imports(package: Path, path: Path) -> list[tuple[str, bool, int]]:
    """``(imported hfprep module, inside a function?, line)`` for every import statement of ``path``."""
    name = _module_name(package, path)
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    target = ".".join(here[: len(here) - child.level + 1] + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target == "hfprep" or target.startswith("hfprep."):
                    # `from . import x` imports the module hfprep.x when there is one.
                    subs = [f"{target}.{a.name}" for a in child.names if _is_module(package, f"{target}.{a.name}")]
                    found.extend((t, inner, child.lineno) for t in subs or [target])
            elif isinstance(child, ast.Import):
                found.extend((a.name, inner, child.lineno) for a in child.names if a.name.startswith("hfprep"))
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def _graph(package: Path) -> dict[str, list[tuple[str, bool, int]]]:
    return {_module_name(package, p): _imports(package, p) for p in sorted(package.rglob("*.py"))}


def _layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py: add it to LAYERS")


def _upward(graph) -> list[str]:
    return [
        f"{m}:{line} imports {t} (layer {_layer(t)} above {_layer(m)})"
        for m, edges in graph.items()
        for t, _, line in edges
        if _layer(t) > _layer(m)
    ]


def _cycles(graph) -> list[list[str]]:
    """Every back edge of a depth-first walk, as the cycle it closes (function-local imports included)."""
    edges = {m: sorted({t for t, _, _ in e if t != m and t in graph}) for m, e in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def dfs(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in edges[node]:
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                dfs(nxt, [*stack, nxt])
        state[node] = 2

    for node in edges:
        if node not in state:
            dfs(node, [node])
    return cycles


def _local(graph) -> list[str]:
    return [
        f"{m}:{line} imports {t} inside a function"
        for m, edges in graph.items()
        for t, inner, line in edges
        if inner and m not in LOCAL_IMPORTS_ALLOWED
    ]


def _local_third_party(package: Path) -> list[str]:
    """Function-local imports of modules outside hfprep and not in ``LOCAL_THIRD_PARTY``, and function-local
    imports (hfprep's own included) without a comment on their line or the line above."""
    problems = []
    for path in sorted(package.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        name = _module_name(package, path)

        def visit(node: ast.AST, local: bool, name=name, lines=lines) -> None:
            for child in ast.iter_child_nodes(node):
                inner = local or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
                if inner and isinstance(child, ast.Import | ast.ImportFrom):
                    if isinstance(child, ast.Import):
                        tops = {a.name.split(".")[0] for a in child.names}
                    else:
                        tops = {"hfprep" if child.level else (child.module or "").split(".")[0]}
                    where = f"{name}:{child.lineno}"
                    # hfprep's own modules: test_function_local_imports_of_hfprep_only_in_entry_points
                    for top in sorted(tops - LOCAL_THIRD_PARTY.keys() - {"hfprep"}):
                        problems.append(f"{where} imports {top} inside a function: import it at the module top")
                    above = lines[child.lineno - 2].strip() if child.lineno > 1 else ""
                    if "#" not in lines[child.lineno - 1] and not above.startswith("#"):
                        problems.append(f"{where} imports {', '.join(sorted(tops))} inside a function without a "
                                        "comment (on the line or the line above) saying why")
                visit(child, inner)

        visit(ast.parse(source), False)
    return problems


@pytest.fixture(scope="module")
def graph():
    return _graph(PACKAGE)


def test_every_module_is_in_a_layer(graph):
    for module in graph:
        _layer(module)


def test_no_module_imports_a_later_stage(graph):
    assert _upward(graph) == []


def test_no_import_cycles(graph):
    assert _cycles(graph) == []


def test_function_local_imports_of_hfprep_only_in_entry_points(graph):
    assert _local(graph) == []


def test_function_local_imports_only_of_optional_heavy_dependencies_each_with_a_reason():
    assert _local_third_party(PACKAGE) == []


def test_the_checks_catch_a_cycle_an_upward_edge_and_a_hidden_import(tmp_path):
    # A hand-made package: errors -> run is upward, run -> schema -> run is a cycle hidden in a function.
    pkg = tmp_path / "hfprep"
    (pkg / "output").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "output" / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("from .run import go\n")
    (pkg / "schema.py").write_text("def f():\n    from . import run\n")
    (pkg / "run.py").write_text("from .schema import f\nfrom .output import card\n")
    (pkg / "output" / "card.py").write_text("from ..errors import E\n")
    graph = _graph(pkg)
    assert graph["hfprep.output.card"] == [("hfprep.errors", False, 1)]
    run_layer = next(i for i, layer in enumerate(LAYERS) if "run" in layer)
    assert _upward(graph) == [
        f"hfprep.errors:1 imports hfprep.run (layer {run_layer} above 0)",
        f"hfprep.schema:2 imports hfprep.run (layer {run_layer} above 0)",
    ]
    assert ["hfprep.run", "hfprep.schema", "hfprep.run"] in [c[-3:] for c in _cycles(graph)]
    assert _local(graph) == ["hfprep.schema:2 imports hfprep.run inside a function"]


def test_the_local_import_check_catches_a_core_dependency_and_a_missing_comment(tmp_path):
    pkg = tmp_path / "hfprep"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import datasets\n\ntry:\n    import torch\nexcept ImportError:\n    pass\n")
    (pkg / "run.py").write_text(
        "def f():\n"
        "    import torch  # heavy\n"
        "    # optional extra\n"
        "    import ray.data\n"
        "    from datasets import Dataset\n"
        "    import matplotlib\n"
        "    from . import schema  # only where allowed: test_function_local_imports_of_hfprep_only_in_entry_points\n"
        "    from . import errors\n"
        "    return [torch, ray, Dataset, matplotlib, schema, errors]\n"
    )
    assert _local_third_party(pkg) == [
        "hfprep.run:5 imports datasets inside a function: import it at the module top",
        "hfprep.run:5 imports datasets inside a function without a comment (on the line or the line above) saying why",
        "hfprep.run:6 imports matplotlib inside a function without a comment (on the line or the line above) saying why",
        "hfprep.run:8 imports hfprep inside a function without a comment (on the line or the line above) saying why",
    ]
