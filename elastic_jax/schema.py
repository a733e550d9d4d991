"""Config sections as nested frozen dataclasses: one dict conversion, one unknown-field check, one error type.

Every section of an experiment (model, train, data, checkpoint, mesh, elastic, elastic.router, ...) is a frozen
dataclass. `from_dict` builds one from a (nested, possibly ml_collections) mapping: unknown fields at any depth,
values of the wrong type and values its `__post_init__` refuses all raise `ConfigError` naming the dotted path of
the field (`elastic.router.tau_end: ...`) and what is allowed, before anything is compiled. `to_dict` is the
inverse (plain JSON-able values), so a config survives a round trip through checkpoint metadata.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import types
import typing
from collections.abc import Mapping
from typing import Any


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field (a dotted path) and what is allowed.

    Sections raise it with `field` relative to themselves and `section` their default name; `from_dict` moves the
    error under the section's actual path in the tree (e.g. `router.budgets` -> `elastic.router.budgets`).
    """

    def __init__(self, message: str, field: str | None = None, section: str | None = None):
        self.message, self.field, self.section = message, field, section
        super().__init__(f"{self.path}: {message}" if self.path else message)

    @property
    def path(self) -> str:
        """The dotted path of the field ('' when the message names it itself)."""
        return ".".join(p for p in (self.section, self.field) if p)


class Section:
    """Base of a config section (a frozen dataclass): `SECTION` is its default dotted path, and from_dict / to_dict
    are the generic ones below."""

    SECTION = ""

    @classmethod
    def from_dict(cls, data: Any, path: str | None = None) -> Any:
        return from_dict(cls, data, path)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def invalid(section: Any, field: str, message: str) -> ConfigError:
    """The error of one field of a section object (its SECTION name gives the path when built directly)."""
    return ConfigError(message, field, getattr(section, "SECTION", None))


def plain(data: Any) -> Any:
    """A mapping (ConfigDict, dict, FrozenConfigDict) as a plain dict; anything else unchanged."""
    if data is None:
        return {}
    if hasattr(data, "to_dict") and not dataclasses.is_dataclass(data):
        return data.to_dict()
    if isinstance(data, Mapping):
        return dict(data)
    return data


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_types(cls: type) -> dict[str, Any]:
    """{field name: resolved type} of the constructor fields of a section class."""
    hints = _hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def section_type(hint: Any) -> type | None:
    """The section class a field holds (also through `X | None`), or None for a plain value."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if _is_union(hint) and len(args) == 1:
        return section_type(args[0])
    return None


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def from_dict(cls: type, data: Any, path: str | None = None) -> Any:
    """A validated `cls` from a mapping of its fields (nested sections as nested mappings).

    `path` is the section's dotted path in the experiment tree (default: the class's SECTION). A class may
    define `upgrade(data, path) -> data` to read an older layout of its fields.
    """
    path = getattr(cls, "SECTION", "") if path is None else path
    if isinstance(data, cls):
        return data
    data = plain(data)
    if not isinstance(data, Mapping):
        raise ConfigError(f"must be a mapping of fields, got {data!r}", section=path or None)
    if hasattr(cls, "upgrade"):
        data = cls.upgrade(dict(data), path)
    types_ = field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise unknown_field(path, unknown[0], types_, cls)
    values = {name: convert(types_[name], value, join(path, name)) for name, value in data.items()}
    try:
        return cls(**values)
    except ConfigError as err:
        if err.field is None:
            raise
        raise ConfigError(err.message, err.field, path or None) from None
    except (ValueError, TypeError) as err:  # a section's own check: the one error type, its message kept
        raise ConfigError(str(err) if str(err).startswith(path) else f"{path or 'config'}: {err}") from None


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def unknown_field(path: str, name: str, known: Any, section: type | None = None) -> ConfigError:
    """The one error for a field the schema does not have (naming its new place when the section's MOVED says)."""
    moved = getattr(section, "MOVED", {}).get(name)
    near = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    hint = f"; it is now '{join(path, moved)}'" if moved else f" (did you mean '{near[0]}'?)" if near else ""
    return ConfigError(f"unknown field '{join(path, name)}'{hint}; allowed: {sorted(known)}", section=path or None)


def to_dict(obj: Any) -> Any:
    """The plain, JSON-able form of a section (nested sections as dicts, tuples as lists, inf as "inf")."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, float) and math.isinf(obj):
        return "inf" if obj > 0 else "-inf"
    return obj


_NAMES = {int: "an integer", float: "a number", bool: "True or False", str: "a string"}


def convert(hint: Any, value: Any, where: str) -> Any:
    """`value` as the field type `hint` (lists become tuples, ints floats, "inf" infinity); ConfigError naming
    `where` when it cannot be one. Types it does not know pass through to the section's own checks."""
    sub = section_type(hint)
    if sub is not None and value is not None:
        return from_dict(sub, value, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if _is_union(hint):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return convert(arg, value, where)
            except ConfigError:
                pass
        allowed = " or ".join(_describe(a) for a in args)
        raise ConfigError(f"expected {allowed}, got {value!r}", section=where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return value  # e.g. one path for a tuple of paths: the section normalises or refuses it
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"expected {len(args)} values, got {list(value)!r}", section=where)
        return tuple(convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value))) if args \
            else tuple(value)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"must be one of {list(args)}, got {value!r}", section=where)
        return value
    if hint is float:
        if isinstance(value, str) and value.strip().lower() in ("inf", "+inf", "-inf"):
            return float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str and isinstance(value, os.PathLike):
        return os.fspath(value)
    elif hint is int or hint is bool or hint is str:
        if isinstance(value, hint) and (hint is bool or not isinstance(value, bool)):
            return value
    else:
        return value
    raise ConfigError(f"expected {_NAMES[hint]}, got {value!r}", section=where)


def _describe(hint: Any) -> str:
    if hint is type(None):
        return "None"
    if typing.get_origin(hint) is tuple:
        return "a list"
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def walk(cls: type, parts: list[str]) -> tuple[list[str], str]:
    """Check the dotted path `parts` against the section classes below `cls`: (the path's parts, where a name that
    a section's MOVED says has moved is replaced by its new place, and the dotted path). Raises the unknown-field
    ConfigError at the first name the schema lacks."""
    path, hint, out = "", cls, []
    todo = list(parts)
    while todo:
        part = todo.pop(0)
        section = section_type(hint)
        if section is None:
            raise ConfigError(f"is a value, not a section with field '{part}'", section=path)
        types_ = field_types(section)
        if part not in types_:
            moved = getattr(section, "MOVED", {}).get(part)
            if moved is None:
                raise unknown_field(path, part, types_, section)
            todo = [*moved.split("."), *todo]
            continue
        path, hint = join(path, part), types_[part]
        out.append(part)
    return out, path
