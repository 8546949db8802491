"""tcomp's passes, one per file. Importing this package registers them all."""

from tcomp.passes import canonicalize, quantize_int4_weight, quantize_int8_weight  # noqa: F401
