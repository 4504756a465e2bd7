"""The package's layering, checked on the import graph (every import statement, also inside functions)."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "damo"


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def direct_imports(path: Path) -> set[str]:
    """``damo.*`` modules a file imports (``from damo.x import y`` counts ``damo.x`` and ``damo.x.y``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("damo")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("damo"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def closure(start: str) -> set[str]:
    """Every damo module reachable from ``start`` (a package import also runs its ``__init__``)."""
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m in seen or m not in MODULES:
            continue
        seen.add(m)
        parents = [".".join(m.split(".")[:i]) for i in range(2, m.count(".") + 1)]
        todo += [x for x in direct_imports(MODULES[m]) | set(parents) if x in MODULES]
    return seen


def test_model_imports_no_data_eval_or_train():
    for name in (m for m in MODULES if m.startswith("damo.model")):
        bad = {m for m in closure(name) if m.split(".")[1] in ("data", "eval", "train")}
        assert not bad, f"{name} reaches {sorted(bad)}"


def test_grounding_api_reaches_neither_the_evaluator_nor_the_procedural_generator():
    reach = closure("damo.api")
    assert not {m for m in reach if m.startswith("damo.eval")}
    assert "damo.data.synthetic" not in reach and "damo.model.processing" in reach and "damo.media" in reach


def test_the_checker_sees_function_level_imports(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from damo.eval.grounding import span_iou\n")
    assert direct_imports(f) == {"damo.eval.grounding", "damo.eval.grounding.span_iou"}
