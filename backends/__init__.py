"""tcomp's backends. Importing this package registers them (triton is imported lazily, at launch)."""

from tcomp.backends import eager, triton  # noqa: F401
