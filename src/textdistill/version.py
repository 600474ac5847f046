"""The package version (a leaf module: caches and artifacts record it)."""

__version__ = "0.1.0"
