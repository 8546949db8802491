"""tcomp's passes, one per file. Importing this package registers them all."""

from tcomp.passes import (  # noqa: F401
    canonicalize,
    linear_attention,
    rasp_extract,
    softmax_free,
    token_merge,
)
