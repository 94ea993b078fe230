"""Import layers of the umdbench package.

Rule: a module may import umdbench modules of its own layer or of a lower one, never of a higher
one, and the imports among umdbench modules form no cycle. Every import counts: module-level and
inside functions, ``import x`` and ``from x import y``, relative imports resolved, including those
under ``if TYPE_CHECKING:`` (they still say which way the dependency points). A package's
``__init__`` is a module of its own: ``from umdbench.plugin import get_registries`` depends on
``umdbench.plugin``, ``from umdbench.cli import data`` on the submodule ``umdbench.cli.data``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Lowest first. A name maps the module itself and, for a package, every module below it.
LAYERS: list[tuple[str, ...]] = [
    ("umdbench", "umdbench.errors", "umdbench.util", "umdbench.hookspecs", "umdbench.draws"),  # 0: no umdbench deps
    ("umdbench.api",),  # 1: the plugin contract
    ("umdbench.models", "umdbench.data"),  # 2: building blocks
    ("umdbench.kit",),  # 3: what plugin authors build on
    ("umdbench.plugin",),  # 4: registries and plugin loading
    ("umdbench.plan",),  # 5: config, stages, suites
    ("umdbench.results",),  # 6
    ("umdbench.run",),  # 7
    ("umdbench.sweep",),  # 8
    ("umdbench.cli",),  # 9
]
# Names of layer 0 cover only themselves: "umdbench" is the package __init__, not everything.
EXACT = {"umdbench", "umdbench.errors", "umdbench.util", "umdbench.hookspecs", "umdbench.draws", "umdbench.api"}

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "umdbench"


def layer_of(module: str) -> int | None:
    for layer, names in enumerate(LAYERS):
        for name in names:
            if module == name or (name not in EXACT and module.startswith(name + ".")):
                return layer
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported umdbench module
    file: str  # repo-relative path
    line: int
    text: str  # the import statement, as written

    def where(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


def collect_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def statement_text(lines: list[bytes], node: ast.stmt) -> str:
    """The statement as written, on one line. ``lines`` are the file's lines as bytes (the AST's column
    offsets count UTF-8 bytes); ``ast.get_source_segment`` would split the whole file again per call."""
    first, last = node.lineno - 1, node.end_lineno - 1
    if first == last:
        raw = lines[first][node.col_offset : node.end_col_offset]
    else:
        raw = lines[first][node.col_offset :] + b"".join(lines[first + 1 : last]) + lines[last][: node.end_col_offset]
    return " ".join(raw.decode().split())


def collect_imports(modules: dict[str, Path]) -> list[Import]:
    found = []
    for source, path in modules.items():
        code = path.read_text()
        tree = ast.parse(code, filename=str(path))
        lines = code.encode().splitlines(keepends=True)
        is_package = path.name == "__init__.py"
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    # relative: strip (level - 1) parts from the package this module is in
                    package = source.split(".") if is_package else source.split(".")[:-1]
                    base_parts = package[: len(package) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # `from pkg import sub` depends on the submodule when there is one, else on pkg
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            text = statement_text(lines, node)
            for target in dict.fromkeys(targets):
                if target == "umdbench" or target.startswith("umdbench."):
                    found.append(Import(source, target, rel, node.lineno, text))
    return found


def find_cycles(imports: list[Import]) -> list[list[Import]]:
    """One cycle (as its chain of imports) per strongly connected component of the import graph."""
    graph: dict[str, dict[str, Import]] = {}
    for imp in imports:
        if imp.source != imp.target:
            graph.setdefault(imp.source, {}).setdefault(imp.target, imp)

    # Tarjan's strongly connected components (iterative: no recursion limit to worry about)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, {}))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))

    cycles = []
    for component in components:
        members = set(component)
        start = component[0]
        # shortest path start -> ... -> start inside the component (breadth first)
        previous: dict[str, Import] = {}
        frontier = [start]
        while frontier and start not in previous:
            nxt = []
            for node in frontier:
                for child, imp in sorted(graph.get(node, {}).items()):
                    if child in members and child not in previous:
                        previous[child] = imp
                        nxt.append(child)
            frontier = nxt
        chain, node = [], start
        while True:
            imp = previous[node]
            chain.append(imp)
            node = imp.source
            if node == start:
                break
        cycles.append(chain[::-1])
    return cycles


MODULES = collect_modules()
IMPORTS = collect_imports(MODULES)


def test_the_walk_sees_the_package():
    assert {"umdbench", "umdbench.api", "umdbench.plugin", "umdbench.plugin.loading", "umdbench.cli"} <= set(MODULES)
    assert any(i.source == "umdbench.plugin" and i.target == "umdbench.plugin.loading" for i in IMPORTS)
    # function-level imports count too (the CLI imports its commands lazily)
    assert any(i.source == "umdbench.cli" and i.target.startswith("umdbench.run") for i in IMPORTS)


def test_every_module_has_a_layer():
    unmapped = sorted(
        {m for m in MODULES if layer_of(m) is None} | {i.target for i in IMPORTS if layer_of(i.target) is None}
    )
    assert not unmapped, (
        "modules missing from LAYERS in tests/test_architecture.py (add them to a layer): " + ", ".join(unmapped)
    )


def test_imports_that_do_not_resolve_to_a_module_file():
    # a stale path after a move (e.g. `from umdbench.suites import ...`) fails here with its file:line
    missing = [i for i in IMPORTS if i.target not in MODULES]
    assert not missing, "imports of umdbench modules that do not exist:\n" + "\n".join(
        f"  {i.where()}  ({i.target})" for i in missing
    )


def test_no_module_imports_a_higher_layer():
    upward = []
    for imp in IMPORTS:
        src, dst = layer_of(imp.source), layer_of(imp.target)
        if src is not None and dst is not None and dst > src:
            upward.append(f"  {imp.where()}\n      {imp.source} (layer {src}) -> {imp.target} (layer {dst})")
    assert not upward, (
        f"{len(upward)} import(s) point up the layers (lowest first: "
        + " < ".join("/".join(n.removeprefix("umdbench.") for n in names) for names in LAYERS)
        + "); move the shared code down or invert the dependency:\n"
        + "\n".join(upward)
    )


# Imports the layers allow but a package must not make: (importing package, imported package, why).
FORBIDDEN: list[tuple[str, str, str]] = [
    (
        "umdbench.results",
        "umdbench.plugin",
        "results render from the Suite objects (and reference points, overlap report) the caller hands "
        "in; resolving suites through the plugin registries is the CLI's job",
    ),
]


def _in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def forbidden_imports(imports: list[Import]) -> list[str]:
    return [
        f"  {imp.where()}\n      {source} must not import {target}: {why}"
        for source, target, why in FORBIDDEN
        for imp in imports
        if _in_package(imp.source, source) and _in_package(imp.target, target)
    ]


def test_no_forbidden_imports():
    found = forbidden_imports(IMPORTS)
    assert not found, f"{len(found)} forbidden import(s):\n" + "\n".join(found)


def test_forbidden_imports_flags_a_results_module_that_loads_plugins():
    flagged = Import("umdbench.results.board_data", "umdbench.plugin.loading", "f.py", 3, "from ... import x")
    allowed = Import("umdbench.cli", "umdbench.plugin", "g.py", 1, "from umdbench.plugin import get_registries")
    assert len(forbidden_imports([flagged, allowed])) == 1


def test_no_import_cycles():
    cycles = find_cycles(IMPORTS)
    report = []
    for chain in cycles:
        path = " -> ".join([chain[0].source] + [imp.target for imp in chain])
        report.append(f"  cycle {path}\n" + "\n".join(f"      {imp.where()}" for imp in chain))
    assert not cycles, f"{len(cycles)} import cycle(s) among umdbench modules:\n" + "\n".join(report)


# -- data services come from umdbench.data --------------------------------------------------------
# The dataset catalog and the checks run before training live in umdbench.data.catalog (layer 2),
# one floor below every user. The planner imports them too, so they are reachable through
# umdbench.plan as well; a module that takes them from there (as umdbench.run once did) depends on
# the planner for its data. Every importer names the catalog module itself.
DATA_SERVICES = "umdbench.data.catalog"


def data_service_names(path: Path) -> set[str]:
    """The public surface (``__all__``) of the data-services module."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError(f"{path} has no __all__")


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def data_services_taken_elsewhere(
    modules: dict[str, Path], names: set[str], owner: str = DATA_SERVICES, root: Path = ROOT
) -> list[str]:
    """``file:line: statement`` of each place a umdbench module takes one of ``names`` from a umdbench
    module other than ``owner``: ``from umdbench.plan.stage_plan import DataCatalog``, or
    ``stage_plan.DataCatalog`` on a name bound to such a module (``import umdbench.plan.stage_plan``,
    ``from umdbench.plan import stage_plan``, ``... as sp``)."""
    found = []
    for source, path in modules.items():
        if source == owner:
            continue
        text = path.read_text()
        tree = ast.parse(text, filename=str(path))
        package = source.split(".") if path.name == "__init__.py" else source.split(".")[:-1]
        rel = str(path.relative_to(root))
        bound: dict[str, str] = {}  # local name -> the umdbench module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("umdbench."):
                        bound[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - (node.level - 1)] + ([node.module] if node.module else []))
                if not base.startswith("umdbench"):
                    continue
                for alias in node.names:
                    if f"{base}.{alias.name}" in modules:
                        bound[alias.asname or alias.name] = f"{base}.{alias.name}"
                    elif alias.name in names and base != owner:
                        where = " ".join((ast.get_source_segment(text, node) or "").split())
                        found.append(f"  {rel}:{node.lineno}: {where}  ({alias.name} from {base})")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in names:
                value = _dotted(node.value)
                module = bound.get(value, value) if value else None
                if module and module.startswith("umdbench") and module != owner:
                    found.append(f"  {rel}:{node.lineno}: {value}.{node.attr}  ({node.attr} from {module})")
    return found


def test_data_services_come_from_umdbench_data():
    names = data_service_names(MODULES[DATA_SERVICES])
    assert {"DataCatalog", "check_cell_data", "missing_data", "skipped_counts"} <= names
    found = data_services_taken_elsewhere(MODULES, names)
    assert not found, (
        f"data services ({', '.join(sorted(names))}) taken from a module other than {DATA_SERVICES} "
        "(the run layer must not reach into umdbench.plan for data); import them from "
        f"{DATA_SERVICES}:\n" + "\n".join(found)
    )


def test_data_services_rule_sees_each_way_in(tmp_path):
    files = {
        "umdbench.plan.stage_plan": "from umdbench.data.catalog import DataCatalog\n",  # reachable here too
        "umdbench.run.a": "from umdbench.plan.stage_plan import Stage, DataCatalog\n",
        "umdbench.run.b": "from umdbench.plan import stage_plan\nc = stage_plan.check_cell_data\n",
        "umdbench.run.c": "import umdbench.plan.stage_plan as sp\nsp.missing_data\n",
        "umdbench.run.d": "from ..plan.stage_plan import skipped_counts\n",
        # the catalog from its own module, planning from the planner
        "umdbench.run.ok": "from umdbench.data.catalog import DataCatalog\n"
        "import umdbench.plan.stage_plan as p\np.Stage\n",
    }
    modules = {DATA_SERVICES: MODULES[DATA_SERVICES]}
    for module, text in files.items():
        path = tmp_path.joinpath(*module.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        modules[module] = path
    found = data_services_taken_elsewhere(
        modules, {"DataCatalog", "check_cell_data", "missing_data", "skipped_counts"}, root=tmp_path
    )
    assert [line.split(":")[0].strip() for line in found] == [
        "umdbench/run/a.py",
        "umdbench/run/b.py",
        "umdbench/run/c.py",
        "umdbench/run/d.py",
    ], found


def test_find_cycles_reports_the_path():
    imp = lambda a, b: Import(a, b, f"{a}.py", 1, f"import {b}")  # noqa: E731
    cycles = find_cycles([imp("a", "b"), imp("b", "c"), imp("c", "a"), imp("c", "d"), imp("d", "d")])
    assert len(cycles) == 1
    assert [(i.source, i.target) for i in cycles[0]] == [("a", "b"), ("b", "c"), ("c", "a")]
    assert find_cycles([imp("a", "b"), imp("b", "c")]) == []


def test_layer_table_maps_packages_and_exact_modules():
    assert layer_of("umdbench") == 0 and layer_of("umdbench.api") == 1
    assert layer_of("umdbench.plugin") == layer_of("umdbench.plugin.loading") == 4
    assert layer_of("umdbench.cli.__main__") == 9
    assert layer_of("umdbench.errors_extra") is None  # a prefix of a name is not the name


def test_import_light_entry_points_do_not_import_torch():
    code = (
        "import sys\nimport umdbench.plugin, umdbench.hookspecs, umdbench.errors\n"
        "print(sorted(m for m in ('torch', 'umdbench.api') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    help_ = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "umdbench.cli", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert help_.returncode == 0 and "usage: umdbench" in help_.stdout, help_.stderr[-2000:]
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in help_.stderr.splitlines() if line.startswith("import time:")
    }
    assert "torch" not in imported and "umdbench.cli" in imported
