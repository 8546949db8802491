"""The report's CSS and JS are files of the package (tcomp/report/assets/), found through
importlib.resources and inlined into report.html: from the package as installed (even zipped, where
no directory lies beside the modules), and listed in the package data so a wheel carries them."""

from __future__ import annotations

import fnmatch
import importlib
import os
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest

import tcomp
from tcomp.report import Report, asset, render_html
from tcomp.report.page import ASSETS

# the packages of a tcomp install and the folders they come from (setup.py's package_dir)
PACKAGES = ("tcomp", "tcomp.passes", "tcomp.backends", "tcomp.models")


def _asset_files() -> set[str]:
    folder = resources.files("tcomp.report.assets")
    return {p.name for p in folder.iterdir() if p.is_file() and not p.name.endswith((".py", ".pyc"))}


def test_every_asset_is_a_package_resource_inlined_once():
    assert _asset_files() == set(ASSETS)
    page = render_html(Report(model="m", target="cpu"))
    for name in ASSETS:
        text = resources.files("tcomp.report.assets").joinpath(name).read_text(encoding="utf-8")
        assert len(text) > 500 and asset(name) == text
        assert page.count(text) == 1, f"{name} is not inlined exactly once"
    assert page.count("<style>") == 1 and page.count("<script>") == 1 and "<link" not in page


def test_unknown_asset_is_refused_with_the_list():
    with pytest.raises(KeyError, match="report.css"):
        asset("../page.py")


def _zip_install(dest: Path) -> Path:
    """tcomp's packages (as a wheel lays them out) in one zip file, without bytecode."""
    zpath = dest / "tcomp.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for pkg in PACKAGES:
            root = Path(importlib.import_module(pkg).__file__).parent
            for f in sorted(root.rglob("*")):
                if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc":
                    z.write(f, Path(*pkg.split("."), f.relative_to(root)).as_posix())
    return zpath


def test_assets_are_found_in_a_zipped_install(tmp_path):
    """Imported from a zip there is no assets folder on disk: the page can only be complete if the
    assets are read as package resources, not by a path relative to the source tree."""
    zpath = _zip_install(tmp_path)
    code = (
        "import os, sys\n"
        f"sys.path.insert(0, {str(zpath)!r})\n"
        "import tcomp.report.page as page\n"
        f"assert page.__file__.startswith({str(zpath)!r}), page.__file__\n"
        "assert not os.path.isdir(os.path.join(os.path.dirname(page.__file__), 'assets'))\n"
        "from tcomp.report import Report, render_html\n"
        "sys.stdout.write(render_html(Report(model='m', target='cpu')))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout == render_html(Report(model="m", target="cpu"))


def test_package_data_lists_every_asset():
    tomllib = pytest.importorskip("tomllib")
    pyproject = Path(tcomp.__file__).parents[1] / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("tcomp is not run from its source tree")
    patterns = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["tcomp"]
    for name in sorted(_asset_files()):
        rel = f"report/assets/{name}"
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), f"{rel} is missing from package-data"
