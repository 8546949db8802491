"""tcomp's passes, one per file. Importing this package registers them all."""

from tcomp.passes import (
    canonicalize,  # noqa: F401
    linear_attention,  # noqa: F401
    softmax_free,  # noqa: F401
)
