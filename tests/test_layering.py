"""Layering contract (DESIGN.md section 2, README "Code layout"): layers import downward only,
PySide6 only in the GUI, no torch stack in domain or io, the GUI never reaches past the engine
into features or matching (it goes through jobs and the worker), the CLI never imports features
(it builds engines through annotator.jobs.engine_factory), the benchmark package sits above
everything and only the CLI's ``bench`` command imports it (lazily), and no package has an
import cycle between its own modules. Lazy imports inside functions count too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RANK = {
    "domain": 0, "io": 1, "features": 2, "matching": 3, "engine": 4, "jobs": 5, "gui": 6,
    "cli": 7, "__main__": 7, "bench": 8,
}
#: (layer, higher layer) imports allowed inside functions only: ``annotator bench``
LAZY_UP = {("cli", "bench")}
FORBIDDEN = {
    "PySide6": {"domain", "io", "features", "matching", "engine", "jobs", "cli"},
    "torch": {"domain", "io"},
    "diffusers": {"domain", "io"},
    "transformers": {"domain", "io"},
    "annotator.gui": {"domain", "io", "features", "matching", "engine", "jobs"},
    "annotator.features": {"gui", "cli", "__main__"},
    "annotator.matching": {"gui"},
}


def layer_of(path: Path, package: Path) -> str | None:
    rel = path.relative_to(package)
    head = rel.parts[0]
    name = head[:-3] if head.endswith(".py") else head
    return name if name in RANK else None


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def top_level_lines(tree: ast.Module) -> set[int]:
    """Lines of the imports that run when the module is imported (not inside a function)."""
    lines: set[int] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                lines.add(child.lineno)
            visit(child)

    visit(tree)
    return lines


def violations(package: Path) -> list[str]:
    """Every import that breaks the contract, as 'file:line: message'."""
    found = []
    for path in sorted(package.rglob("*.py")):
        layer = layer_of(path, package)
        if layer is None:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        eager = top_level_lines(tree)
        for lineno, module in imported_modules(tree):
            where = f"{path.relative_to(package.parent)}:{lineno}"
            top = module.split(".")[0]
            for banned, layers in FORBIDDEN.items():
                if layer in layers and (module == banned or module.startswith(banned + ".")):
                    found.append(f"{where}: {module} imported in layer {layer!r}")
            if top == package.name and module.count("."):
                target = module.split(".")[1]
                lazy_ok = (layer, target) in LAZY_UP and lineno not in eager
                if target in RANK and RANK[target] > RANK[layer] and not lazy_ok:
                    found.append(f"{where}: layer {layer!r} imports higher layer {target!r}")
    return found


def module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the modules of its own package (sibling modules and the package's
    ``__init__``) that it imports, eagerly or lazily, absolutely or relatively."""
    paths = {module_name(p, package): p for p in package.rglob("*.py")}

    def parent(name: str) -> str:
        return name if paths[name].name == "__init__.py" else name.rpartition(".")[0]

    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = parent(name).split(".")
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                for alias in node.names:  # "from pkg import module" names the module
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base)
        graph[name] = {m for m in found if m in paths and m != name
                       and (parent(m) == parent(name) or m == parent(name))}
    return graph


def import_cycles(package: Path) -> list[str]:
    """Each import cycle between modules of one package, as 'a -> b -> a'."""
    graph = import_graph(package)
    cycles: list[str] = []
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    return cycles


def test_project_respects_layers():
    assert violations(ROOT / "annotator") == []


def test_check_catches_wrong_imports(tmp_path):
    pkg = tmp_path / "annotator"
    for sub in ("domain", "io", "jobs"):
        (pkg / sub).mkdir(parents=True)
    (pkg / "domain" / "bad.py").write_text("import PySide6.QtCore\n")
    (pkg / "io" / "bad.py").write_text("def f():\n    import torch\n")
    (pkg / "io" / "up.py").write_text("from annotator.jobs import progress\n")
    (pkg / "jobs" / "ok.py").write_text("import torch\nfrom annotator.io import coco\n")
    found = violations(pkg)
    assert any("domain/bad.py:1: PySide6.QtCore imported in layer 'domain'" in v for v in found)
    assert any("io/bad.py:2: torch imported in layer 'io'" in v for v in found)
    assert any("io/up.py:1: layer 'io' imports higher layer 'jobs'" in v for v in found)
    assert not any("jobs/ok.py" in v for v in found)
    assert len(found) == 3


def test_domain_and_io_import_without_torch_or_qt():
    code = (
        "import sys, annotator.domain, annotator.io.coco, annotator.io.project_file, "
        "annotator.io.images, annotator.jobs.progress\n"
        "bad = [m for m in ('torch', 'PySide6', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_check_catches_the_gui_and_cli_reaching_past_the_engine(tmp_path):
    pkg = tmp_path / "annotator"
    for sub in ("gui", "cli", "jobs", "bench"):
        (pkg / sub).mkdir(parents=True)
    (pkg / "gui" / "bad.py").write_text("def f():\n    from annotator.features import cache\n"
                                        "from annotator.matching.transfer import transfer\n")
    (pkg / "cli" / "bad.py").write_text("import annotator.features.config\n"
                                        "from annotator.bench import runner\n")
    (pkg / "cli" / "ok.py").write_text("def run():\n    from annotator.bench import runner\n"
                                       "from annotator.jobs import engine_factory\n")
    (pkg / "jobs" / "bad.py").write_text("def f():\n    from annotator.bench import runner\n")
    (pkg / "bench" / "ok.py").write_text("from annotator.gui import main_window\n"
                                         "from annotator.features import cache\n")
    found = violations(pkg)
    assert any("gui/bad.py:2: annotator.features imported in layer 'gui'" in v for v in found)
    assert any("gui/bad.py:3: annotator.matching.transfer imported in layer 'gui'" in v
               for v in found)
    assert any("cli/bad.py:1: annotator.features.config imported in layer 'cli'" in v
               for v in found)
    assert any("cli/bad.py:2: layer 'cli' imports higher layer 'bench'" in v for v in found)
    assert any("jobs/bad.py:2: layer 'jobs' imports higher layer 'bench'" in v for v in found)
    assert not any("ok.py" in v for v in found)
    assert len(found) == 5


def test_no_import_cycle_inside_a_package():
    assert import_cycles(ROOT / "annotator") == []


def test_cycle_check_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "annotator"
    (pkg / "io").mkdir(parents=True)
    (pkg / "io" / "__init__.py").write_text("")
    (pkg / "io" / "a.py").write_text("from annotator.io import b\n")
    (pkg / "io" / "b.py").write_text("def f():\n    from . import a\n")  # hidden by laziness
    (pkg / "io" / "c.py").write_text("import annotator.io.a\n")  # into the circle, not on it
    (pkg / "jobs").mkdir()
    (pkg / "jobs" / "x.py").write_text("from annotator.io import c\n")  # across packages
    assert import_cycles(pkg) == ["annotator.io.a -> annotator.io.b -> annotator.io.a"]


def test_benchmark_tooling_lives_in_the_bench_package_only():
    """Benchmarks, baselines, random-weight model builders and the screenshot tool are in
    annotator/bench; the product packages hold none (the CLI's ``bench`` command only parses
    its flags and imports annotator.bench lazily)."""
    product = [p for p in (ROOT / "annotator").rglob("*.py")
               if layer_of(p, ROOT / "annotator") not in (None, "bench")]
    stray = [str(p.relative_to(ROOT)) for p in product
             if p.stem.startswith(("bench", "screenshot")) and p.parent.name != "cli"]
    assert stray == []
    assert {"runner", "baseline", "models", "util", "gui_support", "screenshot"} <= {
        p.stem for p in (ROOT / "annotator" / "bench").glob("*.py")}
