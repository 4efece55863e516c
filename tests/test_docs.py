"""docs/ checked against the code, so the documentation cannot drift from what the gateway does.

The generated tables (every setting, every error) must match a fresh generation; every setting is listed
with a variable that really maps to it; the policy examples parse and match as the doc says; every
`gateway ...` command in the docs parses with the real CLI; the debug headers and readiness reasons the code
can emit are all explained.
"""

from __future__ import annotations

import re
import shlex
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from gateway.admin.api import internal_routes
from gateway.cli import build_parser
from gateway.ops import config_doc
from gateway.paths import split_path
from gateway.policies import PolicyError, parse_policy
from gateway.settings import PRESETS, Settings
from gateway.settings_sources import EnvironmentSource

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def test_generated_tables_are_current() -> None:
    stale = config_doc.stale()
    assert stale == [], f"{stale} no longer match the code: run python -m gateway.ops.config_doc --write"


def test_check_mode_fails_on_a_stale_doc(tmp_path: Path) -> None:
    """The generator really compares: a doc with an old table is reported."""
    (tmp_path / "docs").mkdir()
    for rel in ("docs/configuration.md", "docs/troubleshooting.md"):
        (tmp_path / rel).write_text((ROOT / rel).read_text().replace("`listen.port`", "`listen.prt`"))
    assert config_doc.stale(tmp_path) == ["docs/configuration.md"]


def _leaves(cls: type[BaseModel], path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for name, f in cls.model_fields.items():
        if name == "base_dir":
            continue
        tp = f.annotation
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            out.extend(_leaves(tp, (*path, name)))
        else:
            out.append((*path, name))
    return out


def _env_values(environ: dict[str, str]) -> dict[str, typing.Any]:
    """What the gateway's environment source makes of ``environ``: nested values, before validation."""
    source = EnvironmentSource(Settings, environ, PRESETS)
    assert source.problems == []
    return source()


def test_every_setting_is_documented_with_a_variable_that_reaches_it() -> None:
    doc = _read("configuration.md")
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([^`]+)` \| ([^|]+?) \|", doc, re.M)}
    for leaf in _leaves(Settings):
        name = ".".join(leaf)
        assert name in rows, f"{name} is not in docs/configuration.md"
    for name, env in rows.items():
        if not env.startswith("`GATEWAY_"):
            continue
        var = env.strip("`").replace("<NAME>", "GOLD")
        if name == "key_format":  # a preset name for the whole section
            assert "key_format" in _env_values({var: "deployally"})
            continue
        nested = _env_values({var: "x"})
        path = name.replace("<name>", "gold").split(".")
        node = nested
        for part in path[:-1]:
            node = node[part]
        assert node[path[-1]] == "x", f"{var} does not set {name}"


def test_every_setting_is_described_by_its_field() -> None:
    """The table's description is the model field's ``description``: none is missing, none is written twice."""
    doc = _read("configuration.md")
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([^`]+)` \|[^|]*\|[^|]*\|[^|]*\| (.*) \|$", doc, re.M)}
    for leaf in _leaves(Settings):
        model: type[BaseModel] = Settings
        for part in leaf[:-1]:
            model = model.model_fields[part].annotation  # type: ignore[assignment]
        description = model.model_fields[leaf[-1]].description
        assert description, f"{'.'.join(leaf)} has no description"
        assert rows[".".join(leaf)] == description.replace("|", "\\|"), ".".join(leaf)
    assert not hasattr(config_doc, "DESCRIPTIONS")  # one source: the model


def test_defaults_in_the_doc_are_the_defaults() -> None:
    doc = _read("configuration.md")
    s = Settings()
    for name, shown in (("listen.port", "8080"), ("cache.ttl_seconds", "5"), ("rotation.grace_period", "7d"),
                        ("ops.healthz_path", "/healthz"), ("ops.readyz_path", "/readyz")):
        value = s
        for part in name.split("."):
            value = getattr(value, part)
        assert config_doc._show(value) == shown
        assert re.search(rf"^\| `{re.escape(name)}` \|.*\| `{re.escape(shown)}` \|", doc, re.M), name


# --- policies.md -------------------------------------------------------------------------------------------------


def test_policy_examples_parse_and_match_as_documented() -> None:
    doc = _read("policies.md")
    (example,) = [b for b in _blocks(doc, "yaml") if "routes:" in b]
    policy = parse_policy(yaml.safe_load(example), "docs/policies.md")
    table = doc.split("Checked by tests/test_docs.py", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| (GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) \| (\S+) \| ([^|]+) \|", table, re.M)
    assert len(rows) >= 8
    for method, path, needs in rows:
        route = policy.match(method, split_path(path.encode()))
        needs = needs.strip()
        if needs == "denied":
            assert route is None, f"{method} {path}: the doc says denied, the policy says {route}"
        elif needs == "public":
            assert route is not None and route.public, f"{method} {path}"
        else:
            assert route is not None, f"{method} {path}: the doc says {needs}, the policy denies"
            assert list(route.scopes) == [s.strip() for s in needs.split(",")], f"{method} {path}"


def test_policy_fields_in_the_doc_are_the_parser_fields() -> None:
    doc = _read("policies.md")
    rule_table = doc.split("### Rule fields", 1)[1].split("\n\n", 2)[1]
    documented = set(re.findall(r"^\| `(\w+)` \|", rule_table, re.M))
    assert documented == {"path", "methods", "scopes", "public", "credentials", "description"}
    full = {"path": "/x", "methods": ["GET"], "scopes": ["a:b"], "credentials": ["api_key"], "description": "d"}
    parse_policy({"routes": [full], "scopes": ["c:d"], "version": 1, "description": "d"})
    with pytest.raises(PolicyError, match="unknown field"):
        parse_policy({"routes": [{**full, "undocumented": 1}]})
    with pytest.raises(PolicyError, match="unknown top-level field"):
        parse_policy({"routes": [full], "undocumented": 1})


def test_the_gateway_endpoints_table_lists_every_internal_route() -> None:
    doc = _read("policies.md").replace("{prefix}", "/v1")
    for route in internal_routes("/v1"):
        for method in route.methods:
            row = [ln for ln in doc.splitlines() if f"`{route.template}`" in ln and method in ln.split("|")[1]]
            assert row, f"{method} {route.template} is not in the endpoints table of docs/policies.md"
            for scope in route.scopes:
                assert scope in row[0]


# --- commands and snippets ------------------------------------------------------------------------------------


def _commands() -> list[tuple[str, str]]:
    out = []
    for path in sorted(DOCS.glob("*.md")):
        for block in _blocks(path.read_text(encoding="utf-8"), "sh"):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  #", 1)[0].strip()
                if line.startswith("gateway "):
                    out.append((path.name, line))
    return out


def test_every_gateway_command_in_the_docs_parses() -> None:
    commands = _commands()
    assert len(commands) >= 10
    parser = build_parser()
    for doc, line in commands:
        argv = shlex.split(line)[1:]
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"docs/{doc}: `{line}` is not a valid gateway command")


def test_python_snippets_compile() -> None:
    for path in sorted(DOCS.glob("*.md")):
        for i, block in enumerate(_blocks(path.read_text(encoding="utf-8"), "python")):
            compile(block, f"{path.name}[{i}]", "exec")


def test_rotation_webhook_notice_is_the_one_the_cli_sends() -> None:
    doc = _read("rotation.md")
    (notice,) = [b for b in _blocks(doc, "json") if "key.rotated" in b]
    cli = (ROOT / "gateway" / "cli.py").read_text()
    sent = re.search(r"notice: dict\[str, Any\] = \{(.*?)\}", cli, re.S)
    assert sent is not None
    assert set(yaml.safe_load(notice)) == set(re.findall(r'"(\w+)":', sent.group(1)))


# --- troubleshooting.md ---------------------------------------------------------------------------------------


def test_every_debug_header_is_explained() -> None:
    doc = _read("troubleshooting.md").lower()
    source = (ROOT / "gateway" / "pipeline.py").read_text()
    headers = set(re.findall(r'b"(x-auth-[a-z-]+)"', source))
    assert {"x-auth-key-id", "x-auth-permissions", "x-auth-ip-check", "x-auth-rate-limit"} <= headers
    for header in headers:
        assert f"`{header}`" in doc, f"{header} is not explained in docs/troubleshooting.md"


def test_every_readiness_reason_is_explained() -> None:
    doc = _read("troubleshooting.md")
    source = (ROOT / "gateway" / "ops" / "health.py").read_text()
    reasons = set(re.findall(r'return "([^"]+)"', source))
    assert len(reasons) >= 5
    for reason in reasons:
        assert reason in doc, f"readiness reason {reason!r} is not explained in docs/troubleshooting.md"


def test_no_doc_carries_a_real_looking_key() -> None:
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\b(dep_(live|test)_|da_(test_)?)[A-Za-z0-9]{26,}", text), path.name
