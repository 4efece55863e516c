"""Reference tables for docs/, generated from the code so they cannot drift from it.

* :func:`configuration_reference`: every setting of :class:`gateway.settings.Settings`, walked from the
  dataclasses, with its environment variable, type, default and description (the comment next to the field in
  settings.py, else a line from :data:`DESCRIPTIONS`);
* :func:`error_reference`: every answer the gateway gives on its own behalf (each :class:`GatewayError`
  subclass): status, both platforms' codes and the message.

Each lives in a doc between ``<!-- BEGIN GENERATED ... -->`` and ``<!-- END GENERATED -->`` markers;
``python -m gateway.ops.config_doc --write`` rewrites them and ``--check`` (run by tests/test_docs.py) fails
when a doc is stale.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import io
import pkgutil
import sys
import textwrap
import tokenize
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from gateway.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]

# Descriptions for fields that carry no comment in settings.py (a comment there wins).
DESCRIPTIONS: dict[str, str] = {
    "listen.host": "Address to listen on: 0.0.0.0 for every interface (a container); a sidecar may keep loopback.",
    "listen.port": "Port to listen on.",
    "upstream.url": "The API behind the gateway: every admitted request is streamed there.",
    "upstream.connect_timeout": "Seconds to connect to the upstream; then 502 `upstream_unavailable`.",
    "upstream.read_timeout": "Seconds without a byte from the upstream; then 504 `upstream_timeout`.",
    "upstream.pool_size": "Pooled upstream connections per process.",
    "store.url": "The key store: `sqlite:///relative.db` or `sqlite:////absolute.db`; or Redis, shared by every "
                 "gateway process: one server `redis://host:port/db` (`rediss://` for TLS, `unix:///path.sock?db=0`), "
                 "the master of a Sentinel service `redis+sentinel://host:26379[,host:port...]/<service>[/db]` or a "
                 "Cluster `redis+cluster://host:port[,host:port...]` (`rediss+sentinel://`, `rediss+cluster://` for "
                 "TLS; docs/redis.md). Only keyed hashes of keys are stored.",
    "cache.ttl_seconds": "Seconds a key lookup is cached: a key revoked elsewhere is refused within this.",
    "cache.max_size": "Cached key lookups (known and unknown keys) per process.",
    "policies": "The policy file (docs/policies.md); relative to the configuration file.",
    "error_format": "`deployerp` (`{\"error\": {...}}`) or `deployally` (`{\"success\": false, \"error\": {...}}`).",
    "key_format": "Key prefixes: the preset `deployerp` (`dep_live_`/`dep_test_`) or `deployally` "
                  "(`da_`/`da_test_`), or a mapping with `live` and `test`.",
    "key_format.live": "Prefix of live keys.",
    "key_format.test": "Prefix of test keys.",
    "debug_headers": "Honour `X-Debug-Auth: true` with `X-Auth-*` answer headers (docs/troubleshooting.md).",
    "trusted_proxies": "CIDRs of proxies whose `X-Forwarded-For` is believed (comma-separated in the variable).",
    "forward_authorization": "Pass the client's `Authorization` header on to the upstream.",
    "secret": "The server secret (pepper) keys are hashed with; at least 16 characters. Prefer `GATEWAY_SECRET`.",
    "secret_file": "A file holding the server secret; with neither, one is created beside the SQLite file.",
    "management.enabled": "Serve the key-management API (`{prefix}/api-keys`) and `{prefix}/auth/test`.",
    "jwt.enabled": "Accept dashboard JWTs on routes whose policy rule lists the `jwt` credential.",
    "jwt.algorithms": "Accepted JWT algorithms (HS256, RS256, ES256).",
    "jwt.secret_file": "A file holding the HS256 secret.",
    "jwt.issuer": "Required `iss` claim, when set.",
    "jwt.audience": "Required `aud` claim, when set.",
    "jwt.subject_claim": "The claim naming the user.",
    "jwt.leeway_seconds": "Clock skew allowed on `exp` / `nbf`.",
    "rate_limits.enabled": "Apply per-key rate limits (429 `rate_limit_exceeded` with `Retry-After`).",
    "rate_limits.default_tier": "The tier of keys that name none.",
    "rate_limits.tiers": "Tiers by name; a tier given in the file or environment changes or adds to these.",
    "rate_limits.tiers.<name>.per_hour": "Requests per hour (leave out for no hourly limit).",
    "rate_limits.tiers.<name>.per_minute": "Requests per minute, the burst (leave out for no per-minute limit).",
    "rate_limits.local_share": "With `on_store_error: local`, each process allows 1/local_share of the limit.",
    "rate_limits.max_tracked_keys": "Keys the in-memory limiter tracks (least recently used dropped).",
    "rate_limits.redis_timeout_ms": "How long a Redis rate-limit call may take before `on_store_error` applies.",
    "limits.auth_failures_cooldown_seconds": "How long an address over `auth_failures_per_minute` gets 429.",
}


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    env: str
    type: str
    default: str
    description: str


def _comments(cls: type) -> dict[str, str]:
    """Field name -> the comment on its line, or the comment block right above it, in the class source."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    by_line: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            by_line[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    out: dict[str, str] = {}
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    for node in body.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            line = node.lineno
            text = by_line.get(line)
            if text is None:
                block: list[str] = []
                i = line - 1
                while i >= 1 and lines[i - 1].strip().startswith("#"):
                    block.insert(0, by_line.get(i, ""))
                    i -= 1
                text = " ".join(block) if block else None
            if text:
                out[node.target.id] = text
    return out


def _sentence(text: str) -> str:
    """A source comment as table prose: capitalised, RST ``literals`` as Markdown ones."""
    text = text.replace("``", "`").strip()
    return text[:1].upper() + text[1:] if text else text


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _type_name(args[0]) if len(args) == 1 else " or ".join(_type_name(a) for a in args)
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
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        shown = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in shown.items() if v is not None) + "}"
    if value == "":
        return '""'
    return str(value)


def _env(path: list[str]) -> str:
    return ENV_PREFIX + "__".join(p.upper() for p in path)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _walk(cls: type, path: list[str], default: Any) -> Iterator[Row]:
    hints = typing.get_type_hints(cls)
    notes = _comments(cls)
    for f in dataclasses.fields(cls):
        if f.name == "base_dir":
            continue
        tp = hints[f.name]
        here = [*path, f.name]
        name = ".".join(here)
        value = getattr(default, f.name) if default is not None else _default(f)
        desc = _sentence(notes.get(f.name) or DESCRIPTIONS.get(name, ""))
        if dataclasses.is_dataclass(tp):
            if f.name in DESCRIPTIONS or name == "key_format":
                yield Row(name, _env(here), "preset or mapping", "deployerp", DESCRIPTIONS.get(name, ""))
            yield from _walk(tp, here, value)  # type: ignore[arg-type]
            continue
        if typing.get_origin(tp) is dict:
            _, vtype = typing.get_args(tp)
            if dataclasses.is_dataclass(vtype):
                yield Row(name, "(see below)", "mapping", _show(value), desc)
                vnotes = _comments(vtype)  # type: ignore[arg-type]
                for vf in dataclasses.fields(vtype):
                    sub = f"{name}.<name>.{vf.name}"
                    yield Row(sub, _env([*here, "<NAME>", vf.name]), _type_name(typing.get_type_hints(vtype)[vf.name]),
                              "(per tier)", _sentence(DESCRIPTIONS.get(sub) or vnotes.get(vf.name, "")))
            else:
                # Keys such as path templates cannot be spelled in a variable name: file only.
                yield Row(name, "(file only)", "mapping", _show(value), desc)
            continue
        yield Row(name, _env(here), _type_name(tp), _show(value), desc)


def settings_rows() -> list[Row]:
    """One row per setting, in the order of the dataclasses."""
    return list(_walk(Settings, [], Settings()))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def configuration_reference() -> str:
    """The Markdown tables of every setting, one table per section."""
    groups: dict[str, list[Row]] = {}
    for row in settings_rows():
        head = row.name.split(".", 1)[0] if "." in row.name else "(top level)"
        groups.setdefault(head, []).append(row)
    out: list[str] = []
    for head, rows in groups.items():
        out.append(f"### `{head}`" if head != "(top level)" else "### Top level")
        out.append("")
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


def error_classes() -> list[type]:
    from gateway.errors import GatewayError

    _import_all()
    seen: dict[tuple[int, str], type] = {}
    stack = list(GatewayError.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.__module__.startswith("gateway.") and not cls.__name__.startswith("_"):
            key = (cls.status, cls.code)
            # A subclass that only specialises the message: document the most general class of the code.
            if key not in seen or _generality(cls) < _generality(seen[key]):
                seen[key] = cls
    return [seen[k] for k in sorted(seen)]


def _generality(cls: type) -> tuple[int, bool, str]:
    return len(cls.__mro__), cls.__module__ != "gateway.errors", cls.__qualname__


def error_reference() -> str:
    """The Markdown table of every error answer."""
    out = ["| Status | deployERP `code` | DeployAlly `code` | Message |", "|---|---|---|---|"]
    for cls in error_classes():
        c: Any = cls
        out.append(f"| {c.status} | `{c.code}` | `{c.ally_code}` | {_cell(c.message)} |")
    return "\n".join(out) + "\n"


GENERATORS: dict[str, tuple[str, Callable[[], str]]] = {
    "configuration": ("docs/configuration.md", configuration_reference),
    "errors": ("docs/troubleshooting.md", error_reference),
}


def _markers(name: str) -> tuple[str, str]:
    return (f"<!-- BEGIN GENERATED {name}: python -m gateway.ops.config_doc --write -->",
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
    parser = argparse.ArgumentParser(prog="python -m gateway.ops.config_doc", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the generated blocks in docs/")
    mode.add_argument("--check", action="store_true", help="exit 1 if a generated block is stale")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale()
        for rel in bad:
            print(f"{rel} is stale: run python -m gateway.ops.config_doc --write", file=sys.stderr)
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
