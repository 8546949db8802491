"""Map the top-level folders passes/, backends/ and models/ to tcomp.passes, tcomp.backends and
tcomp.models. Every package list is derived with find_packages, so a new subpackage is never
silently left out of the wheel."""

from setuptools import find_packages, setup

ROOTS = {"tcomp": "tcomp", "tcomp.passes": "passes", "tcomp.backends": "backends", "tcomp.models": "models"}

packages = []
for name, folder in ROOTS.items():
    packages += [name] + [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=ROOTS)
