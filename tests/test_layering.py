"""Layering contract (DESIGN.md section 2): layers import downward only, PySide6 only in
the GUI, no torch stack in domain or io. Lazy imports inside functions count too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RANK = {
    "domain": 0, "io": 1, "features": 2, "matching": 3, "engine": 4, "jobs": 5, "gui": 6,
    "cli": 7, "__main__": 7,
}
FORBIDDEN = {
    "PySide6": {"domain", "io", "features", "matching", "engine", "jobs", "cli"},
    "torch": {"domain", "io"},
    "diffusers": {"domain", "io"},
    "transformers": {"domain", "io"},
    "annotator.gui": {"domain", "io", "features", "matching", "engine", "jobs"},
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


def violations(package: Path) -> list[str]:
    """Every import that breaks the contract, as 'file:line: message'."""
    found = []
    for path in sorted(package.rglob("*.py")):
        layer = layer_of(path, package)
        if layer is None:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for lineno, module in imported_modules(tree):
            where = f"{path.relative_to(package.parent)}:{lineno}"
            top = module.split(".")[0]
            for banned, layers in FORBIDDEN.items():
                if layer in layers and (module == banned or module.startswith(banned + ".")):
                    found.append(f"{where}: {module} imported in layer {layer!r}")
            if top == package.name and module.count("."):
                target = module.split(".")[1]
                if target in RANK and RANK[target] > RANK[layer]:
                    found.append(f"{where}: layer {layer!r} imports higher layer {target!r}")
    return found


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
