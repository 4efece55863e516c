"""Reference tables for docs/, generated from the code so they cannot drift from it.

* :func:`configuration_reference`: every setting of :class:`gateway.config.settings.Settings`, walked from the
  pydantic model, with its environment variable, type, default and description (the field's
  ``Field(description=...)``; a section's description heads its table);
* :func:`error_reference`: every answer the gateway gives on its own behalf (each message id of the catalogues
  in gateway/messages/): status, both platforms' codes, the id and both languages' messages.

Each lives in a doc between ``<!-- BEGIN GENERATED ... -->`` and ``<!-- END GENERATED -->`` markers;
``python -m gateway.config.reference --write`` rewrites them and ``--check`` (run by tests/test_docs.py) fails
when a doc is stale.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from gateway.config.problems import bare_type, is_model
from gateway.config.settings import ENV_PREFIX, PRESETS, Settings

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    env: str
    type: str
    default: str
    description: str


def _type_name(tp: Any) -> str:
    tp = bare_type(tp)
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "string"
    if origin is tuple:
        return "list"
    if origin is dict:
        return "mapping"
    return {bool: "bool", int: "int", float: "number", str: "string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _show(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, BaseModel):
        shown = {name: getattr(value, name) for name in type(value).model_fields}
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in shown.items() if v is not None) + "}"
    if value == "":
        return '""'
    return str(value)


def _env(path: list[str]) -> str:
    return ENV_PREFIX + "__".join(p.upper() for p in path)


def _preset(section: str, value: BaseModel) -> str:
    """The preset name a section's default value is (``key_format: deployerp``)."""
    return next(name for name, fields in PRESETS[section].items() if value.model_dump() == fields)


def _walk(cls: type[BaseModel], path: list[str], default: Any) -> Iterator[Row]:
    for name, f in cls.model_fields.items():
        if f.exclude:  # base_dir: where the file was, not a setting
            continue
        tp = bare_type(f.annotation)
        here = [*path, f.alias or name]  # notifications.smtp.from: a Python keyword, so an alias
        dotted = ".".join(here)
        value = getattr(default, name)
        desc = f.description or ""
        if is_model(tp):
            if dotted in PRESETS:  # given whole as a preset name too
                yield Row(dotted, _env(here), "preset or mapping", _preset(dotted, value), desc)
            yield from _walk(tp, here, value)
            continue
        if typing.get_origin(tp) is dict:
            vtype = bare_type(typing.get_args(tp)[1])
            if is_model(vtype):
                yield Row(dotted, "(see below)", "mapping", _show(value), desc)
                for sub, vf in vtype.model_fields.items():
                    yield Row(f"{dotted}.<name>.{sub}", _env([*here, "<NAME>", sub]), _type_name(vf.annotation),
                              "(per tier)", vf.description or "")
            else:
                # Keys such as path templates cannot be spelled in a variable name: file only.
                yield Row(dotted, "(file only)", "mapping", _show(value), desc)
            continue
        yield Row(dotted, _env(here), _type_name(f.annotation), _show(value), desc)


def settings_rows() -> list[Row]:
    """One row per setting, in the order of the model's fields."""
    return list(_walk(Settings, [], Settings()))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def configuration_reference() -> str:
    """The Markdown tables of every setting, one table per section."""
    groups: dict[str, list[Row]] = {}
    rows_all = settings_rows()
    for row in rows_all:
        head = row.name.split(".", 1)[0] if "." in row.name else "(top level)"
        groups.setdefault(head, []).append(row)
    out: list[str] = []
    for head, rows in groups.items():
        out.append(f"### `{head}`" if head != "(top level)" else "### Top level")
        out.append("")
        section = Settings.model_fields.get(head)
        if (section is not None and section.description and is_model(bare_type(section.annotation))
                and not any(r.name == head for r in rows_all)):  # else its row says it (key_format)
            out += [section.description, ""]
        out.append("| Setting | Environment variable | Type | Default | Description |")
        out.append("|---|---|---|---|---|")
        for r in rows:
            env = f"`{r.env}`" if r.env.startswith(ENV_PREFIX) else r.env
            out.append(f"| `{r.name}` | {env} | {r.type} | `{_cell(r.default)}` | {_cell(r.description)} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _import_all() -> None:
    """Import every module of the package, so that every GatewayError subclass is registered whatever was
    imported before (the table must not depend on import order)."""
    import gateway

    for info in pkgutil.walk_packages(gateway.__path__, "gateway."):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except ImportError:  # an optional dependency that is not installed
            continue


def error_classes_all() -> list[type]:
    """Every GatewayError subclass of the package (every module imported first), variants included."""
    from gateway.errors import GatewayError

    _import_all()
    out: list[type] = []
    stack = list(GatewayError.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.__module__.startswith("gateway.") and not cls.__name__.startswith("_"):
            out.append(cls)
    return out


def error_classes() -> list[type]:
    """One class per (status, code): the most general (a variant only changes the message)."""
    seen: dict[tuple[int, str], type] = {}
    for cls in error_classes_all():
        c: Any = cls
        key = (c.status, c.code)
        if key not in seen or _generality(cls) < _generality(seen[key]):
            seen[key] = cls
    return [seen[k] for k in sorted(seen)]


def _generality(cls: type) -> tuple[int, bool, str]:
    return len(cls.__mro__), cls.__module__ != "gateway.errors", cls.__qualname__


def _html_cell(text: str) -> str:
    """A table cell that shows ``<key>`` as written (Markdown would read it as an HTML tag)."""
    return _cell(text).replace("<", "&lt;").replace(">", "&gt;")


def error_reference() -> str:
    """The Markdown table of every answer: one row per message id of the catalogues (gateway/messages/), with
    the status and both platforms' codes of the error class that uses it, and both languages' texts."""
    from gateway import messages

    by_code: dict[str, Any] = {}
    for cls in error_classes():
        by_code.setdefault(cls.code, cls)  # type: ignore[attr-defined]
    english, portuguese = messages.catalogue("deployerp"), messages.catalogue("deployally")
    rows = []
    for message_id, text in english.items():
        c = by_code.get(message_id.split(".", 1)[0])
        if c is None:  # internal_error: the base class's, never answered
            continue
        rows.append((c.status, c.code, message_id, c.ally_code, text, portuguese[message_id]))
    out = ["| Status | deployERP `code` | DeployAlly `code` | Message id | deployERP message (English) "
           "| DeployAlly message (Portuguese) |", "|---|---|---|---|---|---|"]
    for status, code, message_id, ally_code, text, ally in sorted(rows, key=lambda r: r[:3]):
        out.append(f"| {status} | `{code}` | `{ally_code}` | `{message_id}` | {_html_cell(text)} "
                   f"| {_html_cell(ally)} |")
    return "\n".join(out) + "\n"


GENERATORS: dict[str, tuple[str, Callable[[], str]]] = {
    "configuration": ("docs/configuration.md", configuration_reference),
    "errors": ("docs/troubleshooting.md", error_reference),
}


def _markers(name: str) -> tuple[str, str]:
    return (f"<!-- BEGIN GENERATED {name}: python -m gateway.config.reference --write -->",
            f"<!-- END GENERATED {name} -->")


def render(text: str, name: str, body: str) -> str:
    """``text`` with the block ``name`` replaced by ``body``; ValueError when the markers are missing."""
    begin, end = _markers(name)
    head, sep, rest = text.partition(begin)
    if not sep or end not in rest:
        raise ValueError(f"the {name} markers are missing: {begin} ... {end}")
    _, _, tail = rest.partition(end)
    return f"{head}{begin}\n\n{body}\n{end}{tail}"


def stale(root: Path = ROOT) -> list[str]:
    """The docs whose generated blocks differ from what the code says now."""
    out = []
    for name, (rel, make) in GENERATORS.items():
        path = root / rel
        text = path.read_text(encoding="utf-8")
        if render(text, name, make()) != text:
            out.append(rel)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.config.reference", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the generated blocks in docs/")
    mode.add_argument("--check", action="store_true", help="exit 1 if a generated block is stale")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale()
        for rel in bad:
            print(f"{rel} is stale: run python -m gateway.config.reference --write", file=sys.stderr)
        return 1 if bad else 0
    if args.write:
        for name, (rel, make) in GENERATORS.items():
            path = ROOT / rel
            path.write_text(render(path.read_text(encoding="utf-8"), name, make()), encoding="utf-8")
            print(f"wrote {rel}")
        return 0
    print(configuration_reference())
    print(error_reference())
    return 0


if __name__ == "__main__":
    sys.exit(main())
