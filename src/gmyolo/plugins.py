"""Plugins: your own modules for model YAMLs, registered in every process that builds the model.

Three ways in, all ending in :func:`gmyolo.models.yolo.registry.register_module` calls made by your code:

- an installed package that declares an entry point in the ``gmyolo.modules`` group (``pyproject.toml``:
  ``[project.entry-points."gmyolo.modules"] my_blocks = "my_package.blocks"``); every gmyolo process
  imports it before building a model;
- ``--plugin my_blocks.py`` (repeatable) on the command line, or ``load_plugins(["my_blocks.py"])`` in Python;
- the model YAML's ``plugins: [my_blocks.py]`` key (paths relative to the YAML), loaded when you build the
  model from that YAML file. A checkpoint keeps the key, so it says what it needs; but a plugin is code, and
  gmyolo never runs code because a checkpoint names it: ``val``/``predict`` of such a checkpoint take
  ``--plugin`` (the error for a missing module says so).

The files loaded in this process are passed on to the processes it starts (torchrun workers for
``--device 0,1``, DataLoader workers, the CLI's own subprocesses) through ``GMYOLO_PLUGINS``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

__all__ = ["ENTRY_POINT_GROUP", "ENV_VAR", "load_plugins", "load_plugin_file", "load_entry_points", "loaded_plugins"]

LOGGER = logging.getLogger("gmyolo")
ENTRY_POINT_GROUP = "gmyolo.modules"
ENV_VAR = "GMYOLO_PLUGINS"  # os.pathsep-separated plugin files, for child processes

_loaded: dict[str, ModuleType] = {}  # resolved path -> module
_entry_points_loaded = False


def load_plugin_file(path: str | os.PathLike) -> ModuleType:
    """Import the Python file ``path`` once (its ``register_module`` calls register its blocks)."""
    resolved = Path(path).expanduser().resolve()
    key = str(resolved)
    if key in _loaded:
        return _loaded[key]
    if not resolved.is_file():
        raise FileNotFoundError(f"plugin file not found: {path}")
    if resolved.suffix != ".py":
        raise ValueError(f"plugin {path}: expected a Python file (.py)")
    # A module name of its own per file, so two plugins called blocks.py do not replace each other.
    name = f"gmyolo_plugin_{resolved.stem}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    _loaded[key] = module
    _export()
    LOGGER.info("plugin: loaded %s", resolved)
    return module


def load_entry_points() -> list[str]:
    """Import every installed ``gmyolo.modules`` entry point once; returns their names."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return []
    _entry_points_loaded = True
    names = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        if callable(obj) and not isinstance(obj, ModuleType):
            obj()  # an entry point may name a register() function instead of a module
        names.append(ep.name)
    if names:
        LOGGER.info("plugins: %s (entry points)", ", ".join(names))
    return names


def load_plugins(paths: Iterable[str | os.PathLike] = ()) -> list[str]:
    """Entry points, the files of ``GMYOLO_PLUGINS`` (set by a parent process) and ``paths``; returns the
    files now loaded in this process."""
    load_entry_points()
    inherited = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    for path in [*inherited, *paths]:
        load_plugin_file(path)
    return loaded_plugins()


def loaded_plugins() -> list[str]:
    """The plugin files loaded in this process (absolute paths, in load order)."""
    return list(_loaded)


def _export() -> None:
    """Pass the loaded files on to every process started from now on."""
    os.environ[ENV_VAR] = os.pathsep.join(_loaded)
