"""Layering rules from docs/DESIGN.md: the library never imports the pipeline tools, and the
package claims no top-level name but `anyprec`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"prefect", "mlflow", "dvc"}
LIBRARY_DIRS = [ROOT / "anyprec", ROOT / "kernels"]


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_library_source_never_imports_pipeline_tools():
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_roots(path) & FORBIDDEN)
        for folder in LIBRARY_DIRS
        for path in folder.rglob("*.py")
        if _imported_roots(path) & FORBIDDEN
    }
    assert not offenders, f"anyprec/ and kernels/ must not import {sorted(FORBIDDEN)}: {offenders}"


def test_importing_every_library_module_loads_no_pipeline_tool():
    modules = sorted(
        "anyprec." + ".".join(p.relative_to(ROOT / "anyprec").with_suffix("").parts)
        for p in (ROOT / "anyprec").rglob("*.py")
        if p.name != "__init__.py"
    ) + ["anyprec.kernels"]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(sorted(k for k in sys.modules if k.split('.')[0] in {sorted(FORBIDDEN)!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("name", ["kernels", "tasks", "flows", "dashboards"])
def test_no_generic_top_level_names_are_installed(name, tmp_path):
    # run outside the repository so only what is installed is visible (not the working directory)
    code = f"import importlib.util as u; s = u.find_spec({name!r}); print(s.origin if s else '')"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    origin = out.stdout.strip()
    assert not origin.startswith(str(ROOT)), (
        f"`import {name}` resolves into this repository ({origin}); map the folder into anyprec.* instead"
    )


def test_subpackages_resolve_into_their_folders():
    import anyprec.flows
    import anyprec.kernels
    import anyprec.tasks

    assert Path(anyprec.kernels.__file__).parent == ROOT / "kernels"
    assert Path(anyprec.tasks.__file__).parent == ROOT / "tasks"
    assert Path(anyprec.flows.__file__).parent == ROOT / "flows"
