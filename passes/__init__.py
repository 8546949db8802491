"""tcomp's passes, one per file. Importing this package registers them all."""

from tcomp.passes import (
    canonicalize,  # noqa: F401
    rasp_extract,  # noqa: F401
)
