"""YAML configs with ``key.sub=value`` command-line overrides."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from mri_score.errors import InputError


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML mapping and apply ``a.b=value`` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(cfg, dict):
        raise InputError(f"{path}: config must be a YAML mapping")
    return apply_overrides(cfg, overrides or [])


def apply_overrides(cfg: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``cfg`` with each ``a.b=value`` applied."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise InputError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise InputError(f"override {item!r}: value is not valid YAML") from err
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise InputError(f"override {item!r}: {p} is not a mapping")
        node[parts[-1]] = value
    return cfg


def require(cfg: dict[str, Any], dotted: str, source: str = "config") -> Any:
    """``cfg[a][b]`` for ``"a.b"``, or an :class:`InputError` naming the missing key."""
    node: Any = cfg
    for p in dotted.split("."):
        if not isinstance(node, dict) or p not in node:
            raise InputError(f"{source}: missing key {dotted!r}")
        node = node[p]
    return node
