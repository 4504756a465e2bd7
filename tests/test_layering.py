"""The package's layering, checked on the import graph (every import statement, also inside functions)."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "damo"


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def module_imports(path: Path, name: str) -> set[str]:
    """The damo modules the file of module ``name`` imports, as Python resolves them (also inside functions):
    ``from damo.x import y`` is ``damo.x.y`` when that is a module, else ``damo.x``; relative imports count."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (".".join(package[:len(package) - node.level + 1] + [node.module or ""]).rstrip(".")
                    if node.level else node.module)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while not scc or scc[-1] != v:
                scc.append(stack.pop())
            if len(scc) > 1:
                out.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


GRAPH = {name: module_imports(path, name) for name, path in MODULES.items()}


def closure(start: str) -> set[str]:
    """Every damo module reachable from ``start`` (a package import also runs its ``__init__``)."""
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += GRAPH[m] | {".".join(m.split(".")[:i]) for i in range(2, m.count(".") + 1)}
    return seen


def test_model_imports_no_data_eval_or_train():
    for name in (m for m in MODULES if m.startswith("damo.model")):
        bad = {m for m in closure(name) if m.split(".")[1] in ("data", "eval", "train")}
        assert not bad, f"{name} reaches {sorted(bad)}"


def test_grounding_api_reaches_neither_the_evaluator_nor_the_procedural_generator():
    reach = closure("damo.api")
    assert not {m for m in reach if m.startswith("damo.eval")}
    assert "damo.data.synthetic" not in reach and "damo.model.processing" in reach and "damo.media" in reach


def test_the_model_takes_tensors_and_the_processor_sits_above_it():
    """As in transformers: the model file builds and reads no processor, the pipeline pairs them."""
    assert "damo.model.processing" not in GRAPH["damo.model.modeling_damo"]
    assert {"damo.model.modeling_damo", "damo.model.processing"} <= GRAPH["damo.pipeline"]


def test_no_import_cycle_between_modules():
    assert cycles(GRAPH) == []


def test_no_import_cycle_between_the_package_parts():
    part = lambda m: ".".join(m.split(".")[:2])       # noqa: E731  damo.data, damo.train, damo.card, ...
    parts: dict[str, set[str]] = {part(m): set() for m in GRAPH}
    for m, targets in GRAPH.items():
        parts[part(m)] |= {part(t) for t in targets} - {part(m)}
    assert cycles(parts) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_evaluators_import_nothing_private_from_data():
    for name, path in MODULES.items():
        if not name.startswith("damo.eval"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("damo.data"):
                names = node.module.split(".") + [a.name for a in node.names]
                assert not [n for n in names if n.startswith("_")], f"{name} imports {names} from data/"


def test_span_arithmetic_is_the_bottom_layer():
    assert closure("damo.spans") == {"damo.spans"}
    assert not {m for m in closure("damo.data.synthetic.stvg") if m.startswith("damo.model")}


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from damo.eval.grounding import grounding_metrics\n\n"
                 "from .schema import Sample\nfrom . import formats\n")
    assert module_imports(f, "damo.data.x") == {"damo.eval.grounding", "damo.data.schema", "damo.data.formats"}
