"""docs/ checked against the code, so the documentation cannot drift from what the gateway does.

The generated tables (every setting, every error) must match a fresh generation; every setting is listed
with a variable that really maps to it; the policy examples parse and match as the doc says; every
`gateway ...` command in the docs parses with the real CLI; the debug headers and readiness reasons the code
can emit are all explained; every relative link in the Markdown resolves, anchors included; and the product's
text names behaviours, never numbers from the tracker.
"""

from __future__ import annotations

import re
import shlex
import shutil
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from gateway.admin.api import internal_routes
from gateway.cli import build_parser
from gateway.config import reference as config_doc
from gateway.config.settings import PRESETS, Settings
from gateway.config.sources import EnvironmentSource
from gateway.policy.paths import split_path
from gateway.policy.rules import PolicyError, parse_policy
from tests.support.doclinks import broken_links, links, slug, tracker_references

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def test_generated_tables_are_current() -> None:
    stale = config_doc.stale()
    assert stale == [], f"{stale} no longer match the code: run python -m gateway.config.reference --write"


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
            out.append((*path, f.alias or name))  # notifications.smtp.from: a Python keyword, so an alias
    return out


def _field(model: type[BaseModel], part: str) -> typing.Any:
    """The field a setting's path part names (by its name or its alias)."""
    return next(f for name, f in model.model_fields.items() if part in (name, f.alias))


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
            model = _field(model, part).annotation
        description = _field(model, leaf[-1]).description
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


SDK_READMES = [ROOT / "sdk" / "python" / "README.md", ROOT / "sdk" / "node" / "README.md"]


def test_python_snippets_compile() -> None:
    for path in [*sorted(DOCS.glob("*.md")), *SDK_READMES]:
        for i, block in enumerate(_blocks(path.read_text(encoding="utf-8"), "python")):
            compile(block, f"{path.name}[{i}]", "exec")


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    """.ci/run runs the README's second command word for word; both install the local Python SDK, which the
    tests import (tests/test_dependencies.py)."""
    (ci,) = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.startswith("python3 -m venv")]
    assert ci in _blocks((ROOT / "README.md").read_text(encoding="utf-8"), "sh")[0].splitlines()
    assert "-e sdk/python" in ci


def test_rotation_webhook_notice_is_the_one_the_gateway_sends() -> None:
    """The runbook's webhook notice has the fields gateway/rotation/runner.py sends (the gateway and
    `keys rotate-due` alike), ``value`` being the one added with rotation.deliver_value."""
    doc = _read("rotation.md")
    (notice,) = [b for b in _blocks(doc, "json") if "key.rotated" in b]
    source = (ROOT / "gateway" / "rotation" / "runner.py").read_text()
    sent = re.search(r"notice: dict\[str, Any\] = \{(.*?)\}", source, re.S)
    assert sent is not None
    assert 'notice["value"] = value' in source
    assert set(yaml.safe_load(notice)) == set(re.findall(r'"(\w+)":', sent.group(1))) | {"value"}


# --- troubleshooting.md ---------------------------------------------------------------------------------------


def test_every_debug_header_is_explained() -> None:
    doc = _read("troubleshooting.md").lower()
    source = (ROOT / "gateway" / "gate" / "__init__.py").read_text()
    headers = set(re.findall(r'b"(x-auth-[a-z-]+)"', source))
    assert {"x-auth-key-id", "x-auth-permissions", "x-auth-ip-check", "x-auth-rate-limit"} <= headers
    for header in headers:
        assert f"`{header}`" in doc, f"{header} is not explained in docs/troubleshooting.md"


def test_every_readiness_reason_is_explained() -> None:
    doc = _read("troubleshooting.md")
    source = (ROOT / "gateway" / "observability" / "health.py").read_text()
    reasons = set(re.findall(r'return "([^"]+)"', source))
    assert len(reasons) >= 5
    for reason in reasons:
        assert reason in doc, f"readiness reason {reason!r} is not explained in docs/troubleshooting.md"


def test_no_doc_carries_a_real_looking_key() -> None:
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\b(dep_(live|test)_|da_(test_)?)[A-Za-z0-9]{26,}", text), path.name


# --- links ----------------------------------------------------------------------------------------------------

LINKED_DOCS = [ROOT / "README.md", *sorted(DOCS.glob("*.md")), *sorted((ROOT / "loadtests").glob("*.md")),
               *sorted((ROOT / "deploy").rglob("*.md")), *SDK_READMES]


def test_every_relative_link_in_the_docs_resolves() -> None:
    """Each relative link names a file of the repository and, with a #fragment into a Markdown file, one of its
    headings as GitHub anchors it; http(s) and mailto links are not fetched."""
    broken = broken_links(LINKED_DOCS, ROOT)
    assert broken == [], "broken links:\n" + "\n".join(broken)


def test_the_link_check_names_file_line_and_link(tmp_path: Path) -> None:
    """Only real links are checked (not code spans, fenced or indented code); each broken one is reported."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## Every error, answered (`gateway`)\n\n## Guide\n")
    lines = [
        "# Title",
        "",
        "[ok](docs/guide.md#every-error-answered-gateway) [dup](docs/guide.md#guide-1) [web](https://x.example/a.md)",
        "[gone](docs/missing.md), `[code](docs/nope.md)`, docs/nope.md, [mail](mailto:ops@x.example)",
        "[bad anchor](docs/guide.md#every-error) and [a ref][label], then",
        "[self](#title) [self-bad](#nothing) [out](../outside.md) ![img](docs/diagram.png)",
        "",
        "```",
        "[fenced](docs/nope.md)",
        "```",
        "",
        "    [indented](docs/nope.md)",
        "",
        "[label]: docs/gone-too.md",
    ]
    (tmp_path / "README.md").write_text("\n".join(lines) + "\n")
    assert broken_links([tmp_path / "README.md"], tmp_path) == [
        "README.md:4: (docs/missing.md) docs/missing.md does not exist",
        "README.md:5: (docs/guide.md#every-error) docs/guide.md has no heading whose anchor is #every-error",
        "README.md:6: (#nothing) README.md has no heading whose anchor is #nothing",
        "README.md:6: (../outside.md) points outside the repository",
        "README.md:6: (docs/diagram.png) docs/diagram.png does not exist",
        "README.md:14: (docs/gone-too.md) docs/gone-too.md does not exist",
    ]


def test_a_renamed_heading_breaks_the_readme_link_to_it(tmp_path: Path) -> None:
    """The real README and docs, copied, with the error table's heading renamed: the README's link to it, and
    only that, is reported."""
    for path in LINKED_DOCS:
        (tmp_path / path.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path.relative_to(ROOT)).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    shutil.copytree(DOCS / "images", tmp_path / "docs" / "images")  # the pictures the README shows
    doc = tmp_path / "docs" / "troubleshooting.md"
    doc.write_text(doc.read_text().replace("## Every error the gateway answers", "## Errors"))
    broken = broken_links([tmp_path / "README.md"], tmp_path)
    assert len(broken) == 1 and re.fullmatch(
        r"README\.md:\d+: \(docs/troubleshooting\.md#every-error-the-gateway-answers\) docs/troubleshooting\.md "
        r"has no heading whose anchor is #every-error-the-gateway-answers", broken[0]), broken


def test_the_readme_links_to_the_error_table_where_it_describes_error_answers() -> None:
    """The table of every error the gateway answers itself is generated into one doc (config_doc.GENERATORS): the
    README paragraph that shows the error body links to the heading just above that table."""
    rel, _ = config_doc.GENERATORS["errors"]
    before_table = (ROOT / rel).read_text(encoding="utf-8").split("<!-- BEGIN GENERATED errors", 1)[0]
    heading = re.findall(r"^#+ (.+)$", before_table, re.M)[-1]
    target = f"{rel}#{slug(heading)}"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = readme.splitlines()
    (body_line,) = [n for n, line in enumerate(lines, 1) if '`{"error": {"code"' in line]
    start = max(n for n in range(1, body_line + 1) if not lines[n - 1].strip())
    end = min([n for n in range(body_line, len(lines) + 1) if not lines[n - 1].strip()] or [len(lines) + 1])
    where = [link.line for link in links(readme) if link.target == target]
    assert any(start < line < end for line in where), (
        f"README.md lines {start + 1}-{end - 1} (the error body) have no link to the error table ({target}); "
        f"links to it on lines {where}")


# --- tracker references -----------------------------------------------------------------------------------------

PRODUCT_TEXT = ["README.md", "docs", "tests", "gateway", "loadtests", "deploy", "policies", "config.yaml", "Dockerfile",
                "pyproject.toml", ".ci", "sdk"]


def test_the_product_names_behaviours_not_tracker_issues() -> None:
    """A reader without the tracker learns nothing from an issue number: text names the behaviour instead."""
    found = list(tracker_references([ROOT / top for top in PRODUCT_TEXT], ROOT))
    assert found == [], "name the behaviour instead of pointing at the tracker:\n" + "\n".join(found)


def test_the_tracker_check_finds_each_phrasing(tmp_path: Path) -> None:
    issue = "issue"  # spelt apart here, so that this file does not trip the check it tests
    hits = [f"`Bearer` ({issue} 5 asks that `bearer` be refused)", f"{issue.title()} #" "4, end to end",
            f"{issue}s 3 and 4", f"{issue} 3's wording", "as fixed in (#" "4)", "see #" "12 for why",
            f"after the earlier security {issue}", f"The {issue}'s example tier", f"what the {issue} requires"]
    fine = ["set a new one and issue new keys to everyone", "`jwt.issuer`", "h3{border-top:1px solid #ddd;color:#035}",
            "X-Request-ID: ticket-4711", "# 1. a numbered comment", "### 4. Framing"]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "x.md").write_text("\n".join(hits + fine) + "\n")
    (tmp_path / "docs" / "__pycache__").mkdir()
    (tmp_path / "docs" / "__pycache__" / "x.pyc").write_bytes(b"\x00\xff" + hits[0].encode())
    found = list(tracker_references([tmp_path / "docs"], tmp_path))
    assert found == [f"docs/x.md:{n}: {text}" for n, text in enumerate(hits, 1)]
