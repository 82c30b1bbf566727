"""The import layers of ``allroads/llm`` (docs/architecture.md): every import of another sub-package points to a
lower layer, the module graph has no circle, imports of the package are at module level, and no ``_private`` name
crosses a module boundary. Read from the source (ast), so a violation fails here before any import runs."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

LLM = Path(__file__).resolve().parents[2] / "allroads" / "llm"

LAYERS = {"core": 0, "data": 1, "model": 2, "judge": 3, "train": 3, "evaluation": 4, "pipeline": 5, "figures": 6,
          "cli": 7, "__main__": 8}
"""Sub-package → layer; a module may import its own sub-package and lower layers only (judge and train are
independent of each other)."""


def _modules(root: Path = LLM) -> dict[str, Path]:
    out = {}
    for f in root.rglob("*.py"):
        parts = f.relative_to(root.parent.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _imports(name: str, file: Path) -> list[tuple[str, list[str], bool]]:
    """(imported allroads module, names, inside a function) for each import statement of ``file``."""
    tree = ast.parse(file.read_text())
    inside = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{file}: relative import; the package uses absolute imports"
            out.append((node.module or "", [a.name for a in node.names], id(node) in inside))
        elif isinstance(node, ast.Import):
            out.extend((a.name, [], id(node) in inside) for a in node.names)
    return [(m, n, f) for m, n, f in out if m == "allroads" or m.startswith("allroads.")]


def _target(module: str, names: list[str], known: dict[str, Path]) -> list[str]:
    """The allroads modules an import statement loads (``from pkg import mod`` loads ``pkg.mod``)."""
    subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in known]
    return subs or ([module] if module in known else [])


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[:2] != ["allroads", "llm"] or len(parts) < 3:
        return None
    return LAYERS[parts[2]]


def _graph(known: dict[str, Path]) -> dict[str, set[str]]:
    return {m: {t for mod, names, _ in _imports(m, f) for t in _target(mod, names, known)} for m, f in known.items()}


def test_every_sub_package_has_a_layer():
    subs = {p.name for p in LLM.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert subs | {"__main__"} == set(LAYERS)


def test_imports_point_downward():
    known = _modules()
    bad = []
    for m, deps in _graph(known).items():
        own = _layer(m)
        for d in deps:
            other = _layer(d)
            if own is None or other is None:
                continue
            same_package = m.split(".")[2] == d.split(".")[2]
            if not same_package and other >= own:
                bad.append(f"{m} (layer {own}) imports {d} (layer {other})")
    assert not bad, "\n".join(bad)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_circle():
    graph = _graph(_modules())
    assert _cycle({k: {d for d in v if d != k} for k, v in graph.items()}) is None, _cycle(graph)


def test_the_checks_can_fail():
    """Negative controls: a made-up upward import and a made-up circle are caught by the same code."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _layer("allroads.llm.core.atomic") < _layer("allroads.llm.figures.paper")


def test_package_imports_are_at_module_level_and_public():
    known = _modules()
    bad = []
    for m, f in known.items():
        for mod, names, in_function in _imports(m, f):
            if in_function:
                bad.append(f"{m}: imports {mod} inside a function")
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private and mod != m:
                bad.append(f"{m}: imports private {private} from {mod}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("stage_code", ["allroads.llm.pipeline.train_builds", "allroads.llm.train.methods"])
def test_training_code_imports_no_sampling_rouge_judge_or_synthetic_task(stage_code):
    """What a training stage's cache key hashes (its build module's import closure) holds no sampling, ROUGE, judge
    or synthetic-task code, so an edit of those re-runs no training stage."""
    from allroads.llm.pipeline.cache import module_closure

    closure = set(module_closure([stage_code]))
    assert stage_code in closure and "allroads.llm.train.loop" in closure
    banned = {m for m in closure if m.startswith(("allroads.llm.judge", "allroads.llm.evaluation", "allroads.llm.figures"))
              or m in {"allroads.llm.model.sample", "allroads.llm.model.sample_vllm", "allroads.llm.data.rouge",
                       "allroads.llm.data.synthetic", "allroads.llm.data.load", "allroads.llm.data.sources",
                       "allroads.llm.pipeline.settings", "allroads.llm.pipeline.context", "allroads.online"}}
    assert not banned, sorted(banned)
    everything = set(module_closure(["allroads.llm.figures.paper"]))  # control: the figures do import them
    assert {"allroads.llm.model.sample", "allroads.llm.data.synthetic", "allroads.llm.judge.judge"} <= everything
