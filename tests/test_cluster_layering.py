"""Ray stays optional: only annotator.jobs.cluster imports it, and importing every other
module of the package (GUI included) and building the CLI parser never loads it."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "annotator"
ALLOWED = {"annotator/jobs/cluster.py"}


def ray_importers() -> set[str]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "ray" or n.startswith("ray.") for n in names):
                found.add(path.relative_to(ROOT).as_posix())
    return found


def test_only_the_cluster_module_imports_ray():
    assert ray_importers() == ALLOWED


PROBE = """
import importlib, pkgutil, sys
import annotator
names = [m.name for m in pkgutil.walk_packages(annotator.__path__, "annotator.")]
assert "annotator.jobs.cluster" in names and "annotator.cli.extract" in names, names
for name in names:
    if name not in ("annotator.jobs.cluster", "annotator.__main__"):  # __main__ runs the CLI
        importlib.import_module(name)
from annotator.cli import build_parser
build_parser().parse_args(["extract", "imgs", "--ray", "local"])
loaded = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
print("RAY", loaded)
import annotator.jobs.cluster as cluster
print("CLUSTER", "ray" in sys.modules)
cluster._ray()
print("RUN", "ray" in sys.modules)
"""


def test_no_module_but_the_cluster_one_loads_ray():
    env_code = "import os; os.environ.setdefault('QT_QPA_PLATFORM', 'offscreen');" + PROBE
    out = subprocess.run([sys.executable, "-c", env_code], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "RAY []" in out.stdout
    # even the cluster module loads Ray only when a run starts, and the probe sees that
    assert "CLUSTER False" in out.stdout and "RUN True" in out.stdout
