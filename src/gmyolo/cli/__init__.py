"""Command-line interface: ``gmyolo`` and ``python -m gmyolo``."""

from .main import main

__all__ = ["main"]
