"""Typed, range-checked mappings: training configs and checkpoint metadata are validated here before use.

A section is a mapping of key to :class:`Field`; :func:`check_section` refuses unknown
keys (listing the valid ones), missing required keys, values of the wrong type (a
string where a number belongs, a scalar where a list or mapping belongs, a boolean
where a number belongs) and values out of range, each in one :class:`InputError`
naming the dotted key.  Numbers written as text are accepted when they parse
(PyYAML reads ``1e-3`` as a string), so a config's ``lr: 1e-3`` keeps working.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mri_score.errors import InputError


@dataclass(frozen=True)
class Field:
    """One key of a section.

    Attributes
    ----------
    kind : str
        ``int``, ``float``, ``bool``, ``str``, ``ints``, ``floats``, ``strs`` (lists), ``mapping``
        (any mapping; validated elsewhere) or ``weights`` (a mapping of names to numbers >= 0).
    low, high : float or None
        Inclusive bounds of a number (of every element of a list).
    open_low : bool
        The lower bound is exclusive (``lr`` in ``(0, 1]``).
    choices : tuple of str
        The accepted strings (``kind="str"``); empty: any non-empty string.
    none : bool
        ``null`` is accepted (the default is used).
    length : tuple of int
        Bounds of a list's length.
    required : bool
        The key must be present.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    choices: tuple[str, ...] = ()
    none: bool = False
    length: tuple[int, int] = (1, 64)
    required: bool = False


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value: Any, key: str, f: Field, integer: bool) -> int | float:
    what = "an integer" if integer else "a number"
    if isinstance(value, bool) or isinstance(value, Mapping | list | tuple) or value is None:
        raise InputError(f"{key} must be {what}, got {_show(value)}")
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{key} must be {what}, got {_show(value)}") from None
    if not math.isfinite(out):
        raise InputError(f"{key} must be a finite number, got {_show(value)}")
    if integer:
        if out != int(out):
            raise InputError(f"{key} must be an integer, got {_show(value)}")
        out = int(out)
    low_ok = f.low is None or (out > f.low if f.open_low else out >= f.low)
    if not low_ok or (f.high is not None and out > f.high):
        lo = "-inf" if f.low is None else f"{f.low:g}"
        hi = "inf" if f.high is None else f"{f.high:g}"
        raise InputError(f"{key} must be in {'(' if f.open_low else '['}{lo}, {hi}], got {_show(value)}")
    return out


def check_value(value: Any, f: Field, key: str) -> Any:
    """``value`` checked against ``f`` (numbers parsed from text), or an :class:`InputError` naming ``key``."""
    if value is None:
        if f.none:
            return None
        raise InputError(f"{key} must not be null")
    if f.kind in ("int", "float"):
        return _number(value, key, f, f.kind == "int")
    if f.kind == "bool":
        if not isinstance(value, bool):
            raise InputError(f"{key} must be true or false, got {_show(value)}")
        return value
    if f.kind == "str":
        if not isinstance(value, str) or not value:
            raise InputError(f"{key} must be a non-empty string, got {_show(value)}")
        if f.choices and value not in f.choices:
            raise InputError(f"{key} must be one of {', '.join(f.choices)}, got {_show(value)}")
        return value
    if f.kind in ("ints", "floats", "strs"):
        if not isinstance(value, list | tuple):
            raise InputError(f"{key} must be a list, got {_show(value)}")
        if not f.length[0] <= len(value) <= f.length[1]:
            raise InputError(f"{key} must have {f.length[0]} to {f.length[1]} entries, got {len(value)}")
        element = Field(f.kind[:-1], f.low, f.high, f.open_low, f.choices)
        return [check_value(v, element, f"{key}[{i}]") for i, v in enumerate(value)]
    if f.kind in ("mapping", "weights"):
        if not isinstance(value, Mapping):
            raise InputError(f"{key} must be a mapping, got {_show(value)}")
        if f.kind == "weights":
            weight = Field("float", 0.0, 1e6)
            return {str(k): check_value(v, weight, f"{key}.{k}") for k, v in value.items()}
        return dict(value)
    raise AssertionError(f.kind)


def check_section(section: Any, fields: Mapping[str, Field], where: str) -> dict[str, Any]:
    """A checked copy of the mapping ``section``: unknown keys refused, each known value checked.

    ``where`` is the dotted name of the section (``train``) or empty for the top level.
    """
    if not isinstance(section, Mapping):
        raise InputError(f"{where or 'the config'} must be a mapping, got {_show(section)}")
    prefix = f"{where}." if where else ""
    unknown = sorted(str(k) for k in section if k not in fields)
    if unknown:
        raise InputError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(prefix + k for k in unknown)}; "
                         f"{where or 'the top level'} takes {', '.join(fields)}")
    out = {}
    for key, f in fields.items():
        if key not in section:
            if f.required:
                raise InputError(f"missing key {prefix}{key}")
            continue
        out[key] = check_value(section[key], f, prefix + key)
    return out
