"""The layer contracts in pyproject.toml hold, and a forbidden import breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")
ENGINE = "The engine never imports Prefect, flows or tasks"
STORAGE = "Storage imports nothing above it"
CYCLES = "No import cycles between vqclip's modules"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=120)


def test_the_layer_contracts_hold():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    for contract in (ENGINE, STORAGE, CYCLES):
        assert f"{contract} KEPT" in done.stdout


@pytest.mark.parametrize(
    "module, line, broken",
    [
        ("vqclip/run/layout.py", "import prefect", ENGINE),
        ("vqclip/run/shard.py", "from tasks.retry import retried", ENGINE),
        ("vqclip/storage/local.py", "from vqclip import layout", STORAGE),
        ("vqclip/errors.py", "from vqclip import layout", CYCLES),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tmp_path, module, line, broken):
    for package in ("vqclip", "flows", "tasks"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / module, "a") as source:
        source.write(f"\n{line}\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert f"{broken} BROKEN" in done.stdout, done.stdout + done.stderr
