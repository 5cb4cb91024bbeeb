"""A frozen config dataclass from the JSON dict a model file stores, with every key and type checked."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from reallm_cli.errors import ConfigError

T = TypeVar("T")

# JSON types a field's annotation accepts (a float field may be written as 1, not 1.0; a bool is not an int)
_JSON_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def config_from_dict(cls: type[T], d: dict, what: str, *, all_keys: bool = True) -> T:
    """``cls(**d)``, refusing keys ``cls`` does not have, values of the wrong type and, with ``all_keys``,
    missing keys (a field left to its default would build another model than the file's weights); the
    dataclass's own checks (``__post_init__``) then run. Every problem is one ``ConfigError`` line."""
    if not isinstance(d, dict):
        raise ConfigError(f"{what}: expected an object, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(f"{what}: unknown key(s) {', '.join(unknown)}")
    missing = [name for name, f in fields.items() if name not in d
               and (all_keys or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING))]
    if missing:
        raise ConfigError(f"{what}: missing key(s) {', '.join(missing)}")
    for name, value in d.items():
        types = _JSON_TYPES.get(str(fields[name].type))
        if types and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            raise ConfigError(f"{what}: {name} must be {fields[name].type}, got {value!r}")
    try:
        return cls(**d)
    except ConfigError:
        raise
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise ConfigError(f"{what}: {exc}") from exc
