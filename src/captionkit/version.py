"""captionkit's version, in a module of its own: lower layers record it without importing the package root."""

__version__ = "0.1.0"
