"""The package's shape: no import cycle among its modules (registries and base classes live in leaf modules), and
no method imports another method (what methods share lives in modules that are not methods)."""

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent / "src" / "textdistill"
METHODS = "textdistill.methods"


def module_files() -> dict[str, Path]:
    files = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return files


def module_imports() -> dict[str, set[str]]:
    """Each module's imports of package modules, wherever they stand: at the top, inside functions (deferred: they
    run later, but the modules still depend on each other) and under ``if TYPE_CHECKING:`` (type-only: nothing runs,
    but the annotations name the other module's types, so the layering counts them too)."""
    files = module_files()
    graph = {}
    for name, f in files.items():
        package = name if f.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                deps |= {f"{target}.{a.name}" if f"{target}.{a.name}" in files else target for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in files}
        graph[name] = deps & files.keys() - {name}
    return graph


def method_modules() -> set[str]:
    """The modules that register a Distiller with ``@register_method``; the rest of ``methods/`` (``base``,
    ``teacher``, ``learned_set``, ``matching``, ``unroll``, ...) holds what methods share."""
    found = set()
    for name, f in module_files().items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                "register_method" in ast.unparse(d) for d in node.decorator_list
            ):
                found.add(name)
    return found


def test_no_import_cycle():
    graph = module_imports()
    assert "textdistill.methods.base" in graph and "textdistill.recipe" in graph
    assert "textdistill.methods.teacher" in graph["textdistill.methods.base"]  # deferred (in Distiller._artifact)
    assert "textdistill.learners.base" in graph["textdistill.train"]  # type-only (under TYPE_CHECKING)
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            assert state.get(dep) != "open", "import cycle: " + " -> ".join(path[path.index(dep):] + [dep])
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_no_method_imports_another_method():
    methods = method_modules()
    assert {f"{METHODS}.dc", f"{METHODS}.bptt", f"{METHODS}.coreset"} <= methods
    assert not methods & {f"{METHODS}.base", f"{METHODS}.teacher", f"{METHODS}.learned_set"}
    assert all(m.startswith(METHODS + ".") for m in methods)
    graph = module_imports()
    crossing = sorted(f"{m} -> {d}" for m in methods for d in graph[m] & methods)
    assert not crossing, "methods import other methods: " + ", ".join(crossing)


def test_methods_import_nothing_above_them():
    """Methods sit below what runs and judges them: none imports the evaluation, the audit, the CLI, the API or the
    bench (what both need lives in a module beneath both, as ``words`` for the audit and condense)."""
    above = ("textdistill.audit", "textdistill.evaluation", "textdistill.cli", "textdistill.api", "textdistill.bench")
    graph = module_imports()
    assert "textdistill.words" in graph["textdistill.methods.condense"]
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() if m.startswith(METHODS + ".") or m == METHODS
                    for d in deps if any(d == a or d.startswith(a + ".") for a in above))
    assert not upward, "methods import modules above them: " + ", ".join(upward)


def test_evaluation_and_audit_sit_below_the_methods():
    """What trains and judges a set (the evaluation protocol, the audit) needs no method: a set's own training
    loss is named in its recipe and resolved beside the training loop."""
    graph = module_imports()
    for judge in ("textdistill.evaluation", "textdistill.audit"):
        upward = sorted(d for d in reachable(graph, judge) if d == METHODS or d.startswith(METHODS + "."))
        assert not upward, f"{judge} reaches methods: {', '.join(upward)}"


def test_the_cli_and_the_bench_go_through_the_api():
    """One pipeline: the CLI, the demo and the bench distil, evaluate, audit and decode through ``api`` and never
    call what lies below it (the method registry stays open to them: its configs give the flags and check suites)."""
    below = ("textdistill.evaluation", "textdistill.audit", "textdistill.decode")
    graph = module_imports()
    callers = [m for m in graph if m == "textdistill.cli" or m.startswith("textdistill.bench")]
    assert "textdistill.bench.runner" in callers
    bypass = sorted(f"{m} -> {d}" for m in callers for d in graph[m] if d in below)
    assert not bypass, "the pipeline is bypassed: " + ", ".join(bypass)
    allowed = {METHODS, f"{METHODS}.base"}  # the registry: METHODS, get_method
    into_methods = sorted(f"{m} -> {d}" for m in callers for d in graph[m]
                          if d.startswith(METHODS + ".") and d not in allowed)
    assert not into_methods, "method internals called from above the api: " + ", ".join(into_methods)
    assert "textdistill.api" in graph["textdistill.cli"] and "textdistill.api" in graph["textdistill.bench.runner"]


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen
