"""tcomp's passes, one per file. Importing this package registers them all."""

from tcomp.passes import canonicalize, token_merge  # noqa: F401
