"""tcomp's version, in a module of its own so that the core (artifact manifests) can read it
without importing the package's face."""

__version__ = "0.1.0"
