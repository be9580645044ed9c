"""YAML configs with ``key.sub=value`` command-line overrides."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from mri_score.errors import InputError, one_line

#: Configs are small text files: larger ones, or ones whose aliases would expand to more nodes
#: than this (a YAML "billion laughs"), are refused before anything is built from them.
MAX_CONFIG_BYTES = 1024**2
MAX_YAML_NODES = 100_000


def _expanded_nodes(node: yaml.Node, memo: dict[int, int], active: set[int], source: str) -> int:
    """Nodes ``node`` stands for once every alias is expanded (memoised: linear in the composed graph)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise InputError(f"{source}: YAML alias refers to itself (a recursive structure); refused")
    active.add(key)
    if isinstance(node, yaml.SequenceNode):
        total = 1 + sum(_expanded_nodes(n, memo, active, source) for n in node.value)
    elif isinstance(node, yaml.MappingNode):
        total = 1 + sum(_expanded_nodes(k, memo, active, source) + _expanded_nodes(v, memo, active, source)
                        for k, v in node.value)
    else:
        total = 1
    active.discard(key)
    memo[key] = min(total, 2**62)
    return memo[key]


def parse_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` of ``text`` after refusing alias bombs and recursive aliases (one line naming ``source``)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None:
            nodes = _expanded_nodes(root, {}, set(), source)
            if nodes > MAX_YAML_NODES:
                raise InputError(f"{source}: YAML expands to {nodes} nodes through its aliases (at most "
                                 f"{MAX_YAML_NODES}); refused before expanding")
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise InputError(f"{source}: not valid YAML ({one_line(str(err).splitlines()[0])})") from None
    except RecursionError:
        raise InputError(f"{source}: YAML nested too deeply; refused") from None


def read_text_file(path: str | os.PathLike[str], what: str, max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of a small input file, or an :class:`InputError` (missing, too large, binary, not UTF-8)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found" if not path.exists() else f"{path}: {what} is not a file")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise InputError(f"{path}: {what} of {size} bytes is too large (at most {max_bytes})")
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    if b"\x00" in raw:
        raise InputError(f"{path}: {what} is a binary file, not YAML text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: {what} is not UTF-8 text (byte {err.start})") from None


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML mapping and apply ``a.b=value`` overrides (values parsed as YAML).

    The file must be small UTF-8 text (:func:`read_text_file`) without alias bombs (:func:`parse_yaml`).
    """
    path = Path(path)
    cfg = parse_yaml(read_text_file(path, "config file"), str(path))
    if not isinstance(cfg, dict):
        raise InputError(f"{path}: config must be a YAML mapping, got {type(cfg).__name__}")
    try:
        return apply_overrides(cfg, overrides or [])
    except InputError as err:
        raise InputError(f"{path}: {err}") from None


def apply_overrides(cfg: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``cfg`` with each ``a.b=value`` applied."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise InputError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        value = parse_yaml(raw, f"override {item!r}")
        node = cfg
        parts = key.split(".")
        if not all(parts):
            raise InputError(f"override {item!r}: empty key")
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
