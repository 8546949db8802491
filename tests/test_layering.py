"""The layering of DESIGN.md, held by import-linter (contracts in pyproject.toml).

passes/, backends/ and models/ install as tcomp.passes, tcomp.backends and tcomp.models through
setuptools' package-dir mapping, which import-linter cannot follow in the source tree. The test copies
the tree into a temporary folder laid out as installed and lints that copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
FACES = {"__init__", "api", "cli", "dynamo", "optimize_decoder", "spec"}  # they wire passes, backends and models up
MAPPED = {"passes": "passes", "backends": "backends", "models": "models"}


def _contracts() -> dict[str, dict]:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {c["id"]: c for c in conf["tool"]["importlinter"]["contracts"]}


def _installed_layout(dest: Path) -> Path:
    pkg = dest / "tcomp"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "tcomp", pkg, ignore=ignore)
    for sub, folder in MAPPED.items():
        shutil.copytree(ROOT / folder, pkg / sub, ignore=ignore)
    return dest


def test_every_tcomp_module_is_a_face_or_in_the_core_contract():
    core = set(_contracts()["core"]["source_modules"])
    found = {
        f"tcomp.{p.stem}"
        for p in (ROOT / "tcomp").iterdir()
        if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())) and p.stem not in FACES
    }
    assert found - core == set(), f"add these modules to the core contract in pyproject.toml: {found - core}"
    assert core - found == set(), f"the core contract names modules that do not exist: {core - found}"


def test_models_contract_forbids_every_other_module_of_tcomp():
    """The models contract repeats the core list (import-linter cannot forbid the root package to
    its own subpackage): a module added to the core must be forbidden to models/ too."""
    contracts = _contracts()
    want = set(contracts["core"]["source_modules"]) | {f"tcomp.{f}" for f in FACES - {"__init__"}}
    want |= {f"tcomp.{sub}" for sub in MAPPED if sub != "models"}
    got = set(contracts["models"]["forbidden_modules"])
    assert got == want, f"models contract: add {sorted(want - got)}, drop {sorted(got - want)}"


def test_import_contracts_hold(tmp_path):
    exe = Path(sys.executable).parent / "lint-imports"
    if not exe.exists():
        pytest.fail("import-linter is not installed: it is a dev dependency (pip install -e '.[dev]')")
    src = _installed_layout(tmp_path / "src")
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run(
        [str(exe), "--no-cache", str(ROOT / "pyproject.toml")], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
