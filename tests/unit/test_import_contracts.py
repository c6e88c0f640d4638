"""The architecture is checked, not hoped for (ARCHITECTURE.md §1, docs/adr/0045): the
import-linter contracts in pyproject.toml hold for the code, and a forbidden import breaks
them (so the check can fail)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}  # this copy's packages, not the installed ones
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def copy_of_the_code(tmp_path: Path) -> Path:
    for package in ("schemas", "storage", "workers"):
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_every_contract_is_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_ingress_reaching_into_a_context_breaks_a_contract(tmp_path: Path) -> None:
    root = copy_of_the_code(tmp_path)
    with (root / "workers" / "ingress" / "fields.py").open("a") as f:
        f.write("\nimport workers.invoicing.service  # forbidden: not invoicing's face\n")
    result = lint_imports(root)
    assert result.returncode == 1
    assert "invoicing: other packages import only its face" in result.stdout
    assert "workers.ingress.fields -> workers.invoicing.service" in result.stdout


def test_a_context_opening_a_session_breaks_a_contract(tmp_path: Path) -> None:
    root = copy_of_the_code(tmp_path)
    with (root / "workers" / "alerts" / "handlers.py").open("a") as f:
        f.write("\nfrom sqlalchemy.ext.asyncio import AsyncSession  # forbidden: storage's job\n")
    result = lint_imports(root)
    assert result.returncode == 1
    assert "workers.alerts.handlers -> sqlalchemy" in result.stdout
