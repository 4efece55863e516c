"""Configuration problems: :class:`ConfigError`, and pydantic's validation errors as its ``path: why`` lines.

``path`` is the setting's dotted name (``listen.port``, ``rate_limits.tiers.gold.per_hour``,
``trusted_proxies[1]``); ``why`` says what is expected, in the same words for a value from the file or from
the environment (``must be an integer``, ``must be between 1 and 65535``), and shows the value given only
when its field is shown in ``repr``: a secret (``Field(repr=False)``) is never echoed, whatever is wrong
with it. The gateway's own validators raise :class:`Invalid`, whose text is used as it is.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

Origin = Callable[[tuple[str, ...]], "str | None"]  # a setting's path -> where its value came from


class ConfigError(Exception):
    """A configuration file or value is invalid. :attr:`problems` names every problem found, one ``path: why``
    line each; the message is those lines."""

    def __init__(self, *problems: str) -> None:
        super().__init__(*problems)
        self.problems: tuple[str, ...] = problems

    def __str__(self) -> str:
        return "\n".join(self.problems)


class Invalid(ValueError):
    """Raised by a settings validator: ``why`` says what is expected (the problem's text as it is); ``field``
    names the field of the model that a check across its fields is about."""

    def __init__(self, why: str, field: str | None = None) -> None:
        super().__init__(why)
        self.why = why
        self.field = field


_INTEGER = ("int_type", "int_parsing", "int_from_float", "int_parsing_size")
_NUMBER = ("float_type", "float_parsing")
_BOOLEAN = ("bool_type", "bool_parsing")
_MAPPING = ("model_type", "model_attributes_type", "dict_type")
_LIST = ("tuple_type", "list_type")
_BOUNDS = ("greater_than_equal", "less_than_equal", "greater_than", "less_than")


def problems_of(exc: ValidationError, model: type[BaseModel], origin: Origin) -> list[str]:
    """One ``path: why`` line per error of ``exc`` (raised validating ``model``), in the model's field order;
    ``origin(path)`` may name where the value came from (an environment variable), appended as ``; from X``."""
    out = []
    for error in exc.errors(include_url=False):
        loc: list[str | int] = [part for part in error["loc"] if part != "[key]"]  # a bad mapping key: its path
        if error["type"] == "invalid_key":  # ``2:`` among a section's names: a key, not a list index
            loc[-1] = str(loc[-1])
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, Invalid) and cause.field:
            loc.append(cause.field)
        parent, field = _locate(model, loc)
        why = _why(error, parent, field, str(loc[-1]) if loc else "")
        names = tuple(str(p) for p in _until_index(loc))
        source = origin(names) if names else None
        out.append(f"{_dotted(loc)}: {why}" + (f"; from {source}" if source else ""))
    return out


def _until_index(loc: list[str | int]) -> list[str | int]:
    for i, part in enumerate(loc):
        if isinstance(part, int):
            return loc[:i]
    return loc


def _dotted(loc: list[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def bare_type(annotation: Any) -> Any:
    """``Annotated[X, ...] | None`` -> ``X``: the type a field holds."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _locate(model: type[BaseModel], loc: list[str | int]) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """The model that holds the last part of ``loc``, and that part's field (None inside a mapping or list)."""
    tp: Any = model
    parent: type[BaseModel] | None = None
    field: FieldInfo | None = None
    for part in loc:
        if is_model(tp):
            parent, field = tp, tp.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return parent, None
            tp = bare_type(field.annotation)
        elif typing.get_origin(tp) in (dict, tuple):
            parent, field = None, None
            args = typing.get_args(tp)
            tp = bare_type(args[-1] if typing.get_origin(tp) is dict else args[0])
        else:
            return None, None
    return parent, field


def _got(value: Any, shown: bool) -> str:
    if not shown:
        return ""
    if isinstance(value, bool | int | float):
        return f" (got {value!r})"
    if isinstance(value, str):
        return f" (got {value[:60]!r}{'...' if len(value) > 60 else ''})"
    return f" (got {type(value).__name__})"


def _why(error: Any, parent: type[BaseModel] | None, field: FieldInfo | None, name: str) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    shown = field is None or field.repr is not False
    if kind == "value_error" and isinstance(ctx.get("error"), Invalid):
        return str(ctx["error"].why)
    if kind in ("extra_forbidden", "invalid_key"):
        known = sorted(n for n in parent.model_fields if n != "base_dir") if parent is not None else []
        return f"unknown setting (known: {', '.join(known)})"
    if kind in _INTEGER:
        return "must be an integer" + _got(value, shown)
    if kind in _NUMBER:
        return "must be a number" + _got(value, shown)
    if kind == "finite_number":
        return "must be a finite number" + _got(value, shown)
    if kind in _BOOLEAN:
        return "must be true or false" + _got(value, shown)
    if kind == "string_type":
        return f"must be a string (got {type(value).__name__})"
    if kind in _MAPPING:
        return f"must be a mapping (got {type(value).__name__})"
    if kind in _LIST:
        return f"must be a list (got {type(value).__name__})"
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return "must not be empty"
    if kind == "literal_error" and field is not None and typing.get_origin(bare_type(field.annotation)) is Literal:
        choices = ", ".join(str(c) for c in typing.get_args(bare_type(field.annotation)))
        return f"must be one of {choices}" + _got(value, shown)
    if kind in _BOUNDS:
        return _bounds(ctx, field, name) + _got(value, shown)
    return str(error["msg"])


def _bounds(ctx: dict[str, Any], field: FieldInfo | None, name: str) -> str:
    """The field's whole range, not only the bound the value crossed."""
    limit: dict[str, Any] = {}
    for item in field.metadata if field is not None else ():
        for bound in ("ge", "le", "gt", "lt"):
            if getattr(item, bound, None) is not None:
                limit[bound] = getattr(item, bound)
    limit.update(ctx)
    low, high = limit.get("ge"), limit.get("le")
    if low is not None and high is not None:
        return f"must be between {low} and {high}"
    if limit.get("gt") == 0:
        return "must be a positive number" + (" of seconds" if "second" in name or "timeout" in name else "")
    if limit.get("gt") is not None:
        return f"must be more than {limit['gt']}"
    if low == 0:
        return "must be zero or more"
    if low is not None:
        return f"must be at least {low}"
    if high is not None:
        return f"must be at most {high}"
    return f"must be less than {limit.get('lt')}"
