"""tcomp's backends. Importing this package registers them (triton is imported lazily, at launch)."""

from tcomp.backends import eager, onnxruntime, triton  # noqa: F401
