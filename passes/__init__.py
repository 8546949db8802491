"""tcomp's passes, one per file. Importing this package imports every module in it (pkgutil), and
each pass module registers its pass: a new pass is a new file, with no list to keep up to date."""

from __future__ import annotations

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
