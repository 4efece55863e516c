"""gateway/policy/rules.py: route matching, scope wildcards, the shipped policy files, policy-file errors, and the
property that a path can never be matched by a less protected rule than its RFC 3986-normalised form."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from gateway.admin.api import internal_routes
from gateway.errors import BadRequest
from gateway.policy.paths import PathError, split_path
from gateway.policy.rules import KNOWN_METHODS, Policy, PolicyError, Route, grants, load_policy, parse_policy

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def policy(*rules: dict[str, object], scopes: Sequence[str] = ()) -> Policy:
    return parse_policy({"routes": list(rules), "scopes": list(scopes)}, "test.yaml")


def match(p: Policy, method: str, path: str) -> Route | None:
    return p.match(method, split_path(path.encode()))


# --- matching --------------------------------------------------------------------------------------------------


def test_most_specific_template_wins_segment_by_segment() -> None:
    p = policy(
        {"path": "/v1/servers/**", "methods": ["GET"], "scopes": ["servers:read"]},
        {"path": "/v1/servers/{id}", "methods": ["GET"], "scopes": ["servers:one"]},
        {"path": "/v1/servers/special", "methods": ["GET"], "scopes": ["servers:special"]},
        {"path": "/v1/servers/{id}/reboot", "methods": ["POST"], "scopes": ["servers:write"]},
        {"path": "/v1/servers/{id}/**", "methods": ["POST"], "scopes": ["servers:deep"]},
    )
    assert match(p, "GET", "/v1/servers").scopes == ("servers:read",)  # /** covers the path itself
    assert match(p, "GET", "/v1/servers/").scopes == ("servers:read",)
    assert match(p, "GET", "/v1/servers/42").scopes == ("servers:one",)
    assert match(p, "GET", "/v1/servers/special").scopes == ("servers:special",)  # literal beats {param}
    assert match(p, "GET", "/v1/servers/42/disks").scopes == ("servers:read",)
    assert match(p, "POST", "/v1/servers/42/reboot").scopes == ("servers:write",)
    assert match(p, "POST", "/v1/servers/42/reboot/now").scopes == ("servers:deep",)
    assert match(p, "POST", "/v1/servers/42").scopes == ("servers:deep",)
    # The method is part of the match: no POST rule covers /v1/servers itself.
    assert match(p, "POST", "/v1/servers") is None


def test_a_literal_deeper_match_beats_a_param_and_backtracks_when_the_literal_branch_fails() -> None:
    p = policy(
        {"path": "/a/{x}/c", "methods": ["GET"], "scopes": ["param:c"]},
        {"path": "/a/b/d", "methods": ["GET"], "scopes": ["literal:d"]},
        {"path": "/a/**", "methods": ["GET"], "scopes": ["a:any"]},
    )
    assert match(p, "GET", "/a/b/d").scopes == ("literal:d",)
    # /a/b exists as a literal branch but has no "c": the matcher must come back and try {x}.
    assert match(p, "GET", "/a/b/c").scopes == ("param:c",)
    assert match(p, "GET", "/a/b/e").scopes == ("a:any",)
    assert match(p, "GET", "/a").scopes == ("a:any",)
    assert match(p, "GET", "/b") is None


def test_param_matches_exactly_one_segment() -> None:
    p = policy({"path": "/v1/servers/{id}", "methods": ["GET"], "scopes": ["servers:read"]})
    assert match(p, "GET", "/v1/servers/x") is not None
    assert match(p, "GET", "/v1/servers") is None
    assert match(p, "GET", "/v1/servers/x/y") is None
    # Never an empty segment, even if a caller hands one in without split_path.
    assert p.match("GET", ["v1", "servers", ""]) is None


def test_root_and_catch_all_templates() -> None:
    p = policy(
        {"path": "/", "methods": ["GET"], "public": True},
        {"path": "/**", "methods": ["GET"], "scopes": ["everything:read"]},
    )
    assert match(p, "GET", "/").public
    assert match(p, "GET", "/anything/at/all").scopes == ("everything:read",)
    assert match(p, "POST", "/") is None


def test_methods_are_case_sensitive_and_any_method_is_a_fallback() -> None:
    p = policy(
        {"path": "/v1/servers", "methods": ["GET"], "scopes": ["servers:read"]},
        {"path": "/v1/servers", "methods": "*", "scopes": ["servers:admin"]},
        {"path": "/v1/teams", "methods": ["GET"], "scopes": ["teams:read"]},
    )
    assert match(p, "GET", "/v1/servers").scopes == ("servers:read",)
    assert match(p, "DELETE", "/v1/servers").scopes == ("servers:admin",)
    assert match(p, "get", "/v1/servers").scopes == ("servers:admin",)  # "get" is not GET: only "*" covers it
    assert match(p, "GET", "/v1/teams").scopes == ("teams:read",)
    for method in ("get", "Get", "gET", "GET ", "HEAD", "POST"):
        assert match(p, method, "/v1/teams") is None


def test_paths_are_case_sensitive() -> None:
    p = policy({"path": "/v1/servers/**", "methods": ["GET"], "scopes": ["servers:read"]})
    for path in ("/V1/servers", "/v1/Servers", "/v1/SERVERS/x"):
        assert match(p, "GET", path) is None


def test_unmatched_is_denied() -> None:
    p = policy({"path": "/v1/servers", "methods": ["GET"], "scopes": ["servers:read"]})
    assert match(p, "GET", "/v1/serversX") is None
    assert match(p, "GET", "/v1/server") is None
    assert match(p, "GET", "/v1") is None
    assert match(p, "GET", "/") is None
    assert match(p, "GET", "/v1/servers/1") is None


# --- scopes ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("held", "needed", "granted"),
    [
        ({"servers:read"}, "servers:read", True),
        ({"servers:read"}, "servers:write", False),
        ({"servers:read"}, "servers", False),
        ({"instances:*"}, "instances:write", True),
        ({"instances:*"}, "instances:delete", True),
        ({"instances:*"}, "instances:a:b", True),
        ({"instances:*"}, "instancesX:write", False),
        ({"instances:*"}, "instances", False),
        ({"instances:*"}, "xinstances:write", False),
        ({"instances:*"}, "servers:read", False),
        ({"instances:a:*"}, "instances:a:b", True),
        ({"instances:a:*"}, "instances:b", False),
        ({"*"}, "servers:read", True),
        ({"*"}, "billing:read", True),
        ({"*"}, "anything", True),
        (set(), "servers:read", False),
        ({"servers:read*"}, "servers:readX", False),  # '*' only works as a whole segment
        ({"SERVERS:READ"}, "servers:read", False),
    ],
)
def test_grants(held: set[str], needed: str, granted: bool) -> None:
    assert grants(frozenset(held), needed) is granted


def test_knows_scope() -> None:
    p = policy({"path": "/v1/servers", "methods": ["GET"], "scopes": ["servers:read"]}, scopes=["api-keys:read"])
    assert p.knows_scope("servers:read")
    assert p.knows_scope("servers:*")
    assert p.knows_scope("api-keys:read")
    assert p.knows_scope("*")
    assert not p.knows_scope("servers:write")
    assert not p.knows_scope("serversX:*")
    assert not p.knows_scope("billing:*")


# --- the shipped policy files ----------------------------------------------------------------------------------

DEPLOYERP = [
    # (method, path, the scope the seed's table asks for, or None for "no rule: denied")
    ("GET", "/v1/servers", "servers:read"),
    ("HEAD", "/v1/servers", "servers:read"),
    ("GET", "/v1/servers/srv_1", "servers:read"),
    ("POST", "/v1/servers", "servers:write"),
    ("PATCH", "/v1/servers/srv_1", "servers:write"),
    ("PUT", "/v1/servers/srv_1", "servers:write"),
    ("DELETE", "/v1/servers/srv_1", "servers:delete"),
    ("GET", "/v1/instances", "instances:read"),
    ("POST", "/v1/instances", "instances:write"),
    ("PATCH", "/v1/instances/i_1", "instances:write"),
    ("DELETE", "/v1/instances/i_1", "instances:delete"),
    ("GET", "/v1/backups", "backups:read"),
    ("POST", "/v1/backups", "backups:write"),
    ("DELETE", "/v1/backups/b_1", None),
    ("GET", "/v1/teams", "teams:read"),
    ("POST", "/v1/teams", "teams:write"),
    ("PATCH", "/v1/teams/t_1", "teams:write"),
    ("DELETE", "/v1/teams/t_1", None),
    ("GET", "/v1/invoices", "billing:read"),
    ("GET", "/v1/invoices/inv_1", "billing:read"),
    ("POST", "/v1/invoices", None),
    ("GET", "/v1", None),
    ("GET", "/", None),
    ("GET", "/v1/unknown", None),
    ("OPTIONS", "/v1/servers", None),
    ("get", "/v1/servers", None),
]

DEPLOYALLY = [
    ("GET", "/api/v1/templates", "templates:read"),
    ("GET", "/api/v1/templates/t1", "templates:read"),
    ("POST", "/api/v1/templates", None),
    ("GET", "/api/v1/definitions", "definitions:read"),
    ("POST", "/api/v1/definitions", "definitions:write"),
    ("PUT", "/api/v1/definitions/d1", "definitions:write"),
    ("DELETE", "/api/v1/definitions/d1", "definitions:write"),
    ("GET", "/api/v1/instances", "instances:read"),
    ("GET", "/api/v1/instances/i1", "instances:read"),
    ("POST", "/api/v1/instances/i1/start", "instances:manage"),
    ("POST", "/api/v1/instances/i1/stop", "instances:manage"),
    ("POST", "/api/v1/instances/i1/restart", "instances:manage"),
    ("POST", "/api/v1/instances/i1", None),
    ("POST", "/api/v1/instances/i1/destroy", None),
    ("DELETE", "/api/v1/instances/i1", None),
    ("POST", "/api/v1/deployments", "deployments:create"),
    ("GET", "/api/v1/deployments", None),
    ("GET", "/api/v1/servers", "servers:manage"),
    ("DELETE", "/api/v1/servers/s1", "servers:manage"),
    ("GET", "/v1/servers", None),
]


@pytest.mark.parametrize(("method", "path", "scope"), DEPLOYERP)
def test_deployerp_policy_has_the_seed_scope_table(method: str, path: str, scope: str | None) -> None:
    p = load_policy(POLICIES / "deployerp.yaml")
    route = match(p, method, path)
    if scope is None:
        assert route is None
    else:
        assert route is not None and route.scopes == (scope,) and not route.public


@pytest.mark.parametrize(("method", "path", "scope"), DEPLOYALLY)
def test_deployally_policy_has_the_seed_permission_table(method: str, path: str, scope: str | None) -> None:
    p = load_policy(POLICIES / "deployally.yaml")
    route = match(p, method, path)
    if scope is None:
        assert route is None
    else:
        assert route is not None and route.scopes == (scope,) and not route.public


def test_shipped_policies_know_the_management_scopes_and_the_seed_examples_work() -> None:
    erp = load_policy(POLICIES / "deployerp.yaml")
    ally = load_policy(POLICIES / "deployally.yaml")
    for p in (erp, ally):
        assert p.knows_scope("api-keys:read") and p.knows_scope("api-keys:write")
    # The dashboard login is the gateway's own endpoint (accounts.enabled), not a route to the upstream; the user's
    # own resources take only the dashboard's JWTs.
    assert match(ally, "POST", "/api/v1/auth/login") is None
    profile = match(ally, "GET", "/api/v1/user/profile")
    assert profile.scopes == ("profile:read",) and profile.credentials == frozenset({"jwt"})
    # Every shipped policy has the three dashboard roles; a viewer cannot write keys, a developer can.
    for p in (erp, ally):
        assert set(p.roles) == {"admin", "developer", "viewer"}
        assert grants(p.roles["developer"], "api-keys:write") and not grants(p.roles["viewer"], "api-keys:write")
    # The seed's deployment key: ["instances:*"] can create and delete instances but not read servers.
    deploy = frozenset({"instances:*"})
    assert grants(deploy, match(erp, "POST", "/v1/instances").scopes[0])
    assert grants(deploy, match(erp, "DELETE", "/v1/instances/i_1").scopes[0])
    assert not grants(deploy, match(erp, "GET", "/v1/servers").scopes[0])
    # The read-only key ["servers:read"] cannot write.
    ro = frozenset({"servers:read"})
    assert grants(ro, match(erp, "GET", "/v1/servers/1").scopes[0])
    assert not grants(ro, match(erp, "PATCH", "/v1/servers/1").scopes[0])
    # instances:read does not cover the DeployAlly start/stop/restart actions.
    assert not grants(frozenset({"instances:read"}), match(ally, "POST", "/api/v1/instances/i/stop").scopes[0])


def test_with_routes_refuses_a_clash_with_the_gateways_own_endpoints() -> None:
    p = policy({"path": "/v1/api-keys", "methods": ["GET"], "scopes": ["servers:read"]})
    own = Route(template="/v1/api-keys", methods=frozenset({"GET"}), scopes=("api-keys:read",), internal=True)
    with pytest.raises(PolicyError, match=r"test\.yaml: GET /v1/api-keys clashes with the gateway's own"):
        p.with_routes([own])


@pytest.mark.parametrize("allow_jwt", [False, True])
def test_management_routes_take_jwts_only_when_allowed_and_auth_test_always(allow_jwt: bool) -> None:
    """``management.allow_jwt`` decides the key-management API's credentials; ``auth/test`` takes both."""
    routes = internal_routes("/v1", allow_jwt=allow_jwt)
    for route in routes:
        expected = {"api_key", "jwt"} if allow_jwt or route.template == "/v1/auth/test" else {"api_key"}
        assert route.credentials == expected, route
    assert {r.template for r in routes} == {"/v1/auth/test", "/v1/api-keys", "/v1/api-keys/{id}",
                                            "/v1/api-keys/{id}/rotate", "/v1/api-keys/{id}/reveal"}
    assert internal_routes("/v1") == internal_routes("/v1", allow_jwt=False)  # the default: API keys only


def test_describe_lists_every_route() -> None:
    p = load_policy(POLICIES / "deployerp.yaml")
    lines = p.describe()
    assert len(lines) == len(p.routes)
    assert any("/v1/invoices/**" in line and "billing:read" in line for line in lines)


# --- policy-file errors ----------------------------------------------------------------------------------------

GOOD = "  - {path: /v1/servers, methods: [GET], scopes: [servers:read]}\n"

BAD_FILES = [
    # (file text, what the message must contain besides the file name)
    ("routes: [\n", r"not valid YAML \(line \d+, column \d+\)"),
    ("routes:\n  - {path: /a, methods: [GET], scopes: [a:b]\n", r"not valid YAML \(line \d+"),
    ("- just a list\n", "top level must be a mapping"),
    ("", "top level must be a mapping"),
    ("routes: []\n", "'routes' must be a non-empty list"),
    ("rules:\n" + GOOD, "unknown top-level field 'rules'"),
    ("routes:\n" + GOOD + "  - {path: /a, methods: [GET], scope: [a:b]}\n", r"routes\[1\]: unknown field 'scope'"),
    ("routes:\n" + GOOD + "  - {path: /a, methods: [get], scopes: [a:b]}\n", r"routes\[1\]: unknown method 'get'"),
    ("routes:\n" + GOOD + "  - {path: /a, methods: [CONNECT], scopes: [a:b]}\n", r"routes\[1\]: unknown method"),
    ("routes:\n" + GOOD + "  - {path: /a, methods: [], scopes: [a:b]}\n", r"routes\[1\]: methods must be"),
    ("routes:\n" + GOOD + GOOD, r"routes\[1\]: GET /v1/servers is defined twice"),
    (
        "routes:\n" + GOOD + "  - {path: /v1/servers/, methods: [POST, GET], scopes: [a:b]}\n",
        r"routes\[1\]: GET /v1/servers is defined twice",
    ),
    (
        "routes:\n  - {path: '/a/{x}', methods: [GET], scopes: [a:b]}\n"
        "  - {path: '/a/{y}', methods: [GET], scopes: [a:c]}\n",
        r"routes\[1\]: GET /a/\{y\} is defined twice",
    ),
    ("routes:\n" + GOOD + "  - {path: /a/**/b, methods: [GET], scopes: [a:b]}\n", r"routes\[1\]: '/\*\*' may only end"),
    ("routes:\n" + GOOD + "  - {path: /a/b**, methods: [GET], scopes: [a:b]}\n", r"routes\[1\]: invalid path segment"),
    ("routes:\n" + GOOD + "  - {path: /a/*, methods: [GET], scopes: [a:b]}\n", r"routes\[1\]: invalid path segment"),
    ("routes:\n" + GOOD + "  - {path: a/b, methods: [GET], scopes: [a:b]}\n", r"routes\[1\]: path must be"),
    ("routes:\n" + GOOD + "  - {path: /a//b, methods: [GET], scopes: [a:b]}\n", r"routes\[1\]: invalid path segment"),
    ("routes:\n" + GOOD + "  - {path: /a/../b, methods: [GET], scopes: [a:b]}\n", r"routes\[1\]: invalid path segment"),
    ("routes:\n" + GOOD + "  - {path: /a/%2e, methods: [GET], scopes: [a:b]}\n", r"routes\[1\]: invalid path segment"),
    ("routes:\n" + GOOD + "  - {path: '/a/{x}/{x}', methods: [GET], scopes: [a:b]}\n", r"routes\[1\]: parameter"),
    ("routes:\n" + GOOD + "  - {path: /a, methods: [GET], scopes: [Servers:Read]}\n", r"routes\[1\]: invalid scope"),
    ("routes:\n" + GOOD + "  - {path: /a, methods: [GET], scopes: ['servers:*']}\n", r"routes\[1\]: invalid scope"),
    ("routes:\n" + GOOD + "  - {path: /a, methods: [GET], scopes: ['*']}\n", r"routes\[1\]: invalid scope"),
    ("routes:\n" + GOOD + "  - {path: /a, methods: [GET], scopes: ['a b']}\n", r"routes\[1\]: invalid scope"),
    ("routes:\n" + GOOD + "  - {path: /a, methods: [GET], scopes: [':a']}\n", r"routes\[1\]: invalid scope"),
    ("routes:\n" + GOOD + "  - {path: /a, methods: [GET], scopes: [1]}\n", r"routes\[1\]: scopes must be"),
    ("routes:\n" + GOOD + "  - {path: /a, methods: [GET]}\n", r"routes\[1\]: give scopes, or public: true"),
    ("routes:\n" + GOOD + "  - {path: /a, methods: [GET], public: yes-please}\n", r"routes\[1\]: public must be"),
    ("routes:\n" + GOOD + "  - {path: /a, public: true, scopes: [a:b]}\n", r"routes\[1\]: a public rule cannot"),
    ("routes:\n" + GOOD + "  - {path: /a, scopes: [a:b], credentials: [cookie]}\n", r"routes\[1\]: unknown credential"),
    ("routes:\n" + GOOD + "  - just a string\n", r"routes\[1\]: each rule must be a mapping"),
    ("routes:\n" + GOOD + "scopes: [Bad Scope]\n", "'scopes' must be a list of scope names"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_FILES)
def test_every_policy_file_error_names_the_file_and_the_rule(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "my-policy.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert re.search(expected, message), message
    assert "Traceback" not in message


def test_missing_unreadable_and_non_utf8_policy_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="policy file not found"):
        load_policy(tmp_path / "nope.yaml")
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path)  # a directory
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes(b"routes:\n  - {path: /caf\xe9, methods: [GET], scopes: [a:b]}\n")
    with pytest.raises(PolicyError, match=f"{re.escape(str(latin))}: cannot read"):
        load_policy(latin)


def test_a_good_file_loads_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("routes:\n  - {path: /v1/x/**, scopes: x:read}\n  - {path: /v1/up, methods: GET, public: true}\n")
    p = load_policy(path)
    assert match(p, "PATCH", "/v1/x/1").scopes == ("x:read",)  # methods default to any
    assert match(p, "GET", "/v1/up").public
    assert p.source == str(path)


# --- properties (hypothesis) -----------------------------------------------------------------------------------

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, written out step by step as the RFC gives it (an independent oracle)."""
    inp, out = path, ""
    while inp:
        if inp.startswith("../"):
            inp = inp[3:]
        elif inp.startswith("./"):
            inp = inp[2:]
        elif inp.startswith("/./"):
            inp = "/" + inp[3:]
        elif inp == "/.":
            inp = "/"
        elif inp.startswith("/../") or inp == "/..":
            inp = "/" + inp[4:] if inp.startswith("/../") else "/"
            out = out[: out.rfind("/")] if "/" in out else ""
        elif inp in (".", ".."):
            inp = ""
        else:
            start = 1 if inp.startswith("/") else 0
            end = inp.find("/", start)
            end = len(inp) if end == -1 else end
            out, inp = out + inp[:end], inp[end:]
    return out


def rfc3986_normalise(path: str) -> str:
    """Syntax-based normalisation (RFC 3986 6.2.2): escape case, decoding of unreserved escapes, dot segments."""

    def fix(m: re.Match[str]) -> str:
        ch = chr(int(m.group(1), 16))
        return ch if ch in _UNRESERVED else "%" + m.group(1).upper()

    return remove_dot_segments(_ESCAPE.sub(fix, path))


def upstream_segments(normalised: str) -> list[str]:
    """The segments an upstream serving ``normalised`` routes on (one trailing slash ignored, as the gateway
    documents), each percent-decoded once."""
    body = normalised[1:] if normalised.startswith("/") else normalised
    segs = body.split("/") if body else []
    if segs and segs[-1] == "":
        segs.pop()
    return [unquote(s, errors="replace") for s in segs]


def lenient_segments(raw: str) -> list[str]:
    """How the most lenient upstream might read ``raw``: escapes decoded twice before splitting, backslashes as
    slashes, ``;`` parameters dropped, then dot segments removed. Used only to widen "under a protected subtree"."""
    text = unquote(unquote(raw, errors="replace"), errors="replace").replace("\\", "/")
    text = "/".join(seg.split(";", 1)[0] for seg in text.split("/"))
    return [s for s in remove_dot_segments(text).split("/") if s]


def reference_match(routes: Sequence[Route], method: str, segs: Sequence[str]) -> Route | None:
    """What the policy says, computed the slow way: every rule that matches, most specific first.

    Specificity per path segment: literal (0) < {param} (1) < covered by /** (2); then an exact template before a
    /** one ending at the same place; then a rule naming the method before a "*" rule."""
    best: tuple[tuple[int, ...], int, Route] | None = None
    for route in routes:
        if method not in route.methods and "*" not in route.methods:
            continue
        tsegs = [] if route.template == "/" else route.template[1:].split("/")
        subtree = bool(tsegs) and tsegs[-1] == "**"
        if subtree:
            tsegs = tsegs[:-1]
        if len(segs) < len(tsegs) or (not subtree and len(segs) != len(tsegs)):
            continue
        ranks: list[int] = []
        for t, s in zip(tsegs, segs, strict=False):
            if t.startswith("{") and s:
                ranks.append(1)
            elif t == s:
                ranks.append(0)
            else:
                break
        else:
            ranks += [2] * (len(segs) - len(tsegs))
            key = (*ranks, 1 if subtree else 0)
            exact_method = 0 if method in route.methods else 1
            if best is None or (key, exact_method) < (best[0], best[1]):
                best = (key, exact_method, route)
    return None if best is None else best[2]


# Segments a path is built from: plain ones (so that many generated paths are accepted and reach the matcher),
# hostile ones, and whole traversals in one segment aimed from one subtree at another. Each group is drawn
# equally often, whatever its size.
PLAIN = ["v1", "servers", "invoices", "instances", "backups", "templates", "api", "srv_1", "x", "...", ".x", "V1",
         "SERVERS", "Servers", "%73ervers", "%53ervers", "%76%31", "serv%65rs", "%7e", "~", "%e2%82%ac", "*", "%25",
         "%20", "%3b"]
HOSTILE = [
    ".", "..", "", "%2e", "%2E", "%2e%2e", "%2E%2e", ".%2e", "%2e.", "%2e%2e%2f", "%252e%252e",
    "%2f", "%2F", "a%2fb", "%5c", "%5C", "..%5c", "\\", "..\\", "a\\b",
    ";x", "..;", "servers;x", "%00", "a%00", "\x00", "%0a", "\t", " ",
    "%c0%ae", "%C0%AE%C0%AE", "%ff", "%", "%2", "%zz", "**", "{id}",
]
TRAVERSALS = [
    form.format(target)
    for target in ("servers", "invoices", "instances")
    for form in ("..%2f{}", "%2e%2e%2f{}", "..%5c{}", "..\\{}", "..;/{}", "%252e%252e%252f{}", "..%252f{}",
                 "%2e%2e%5c{}", "..%2f..%2f{}")
]
PREFIXES = [[], ["v1"], ["v1", "servers"], ["v1", "servers", "x"], ["v1", "invoices"], ["v1", "backups", "b"],
            ["api", "v1"], ["api", "v1", "templates"], ["api", "v1", "instances", "i1"]]
METHODS = sorted(KNOWN_METHODS) + ["get", "Get", "TRACE", "CONNECT", "*"]
ERP = load_policy(POLICIES / "deployerp.yaml")
ALLY = load_policy(POLICIES / "deployally.yaml")

_plain = st.lists(st.sampled_from(PLAIN), max_size=2)
_tails = st.one_of(
    # Plain segments around one odd one: most such paths get past the hostile-input checks only if a check is
    # missing, which is what these properties look for.
    st.builds(lambda a, odd, b: a + [odd] + b, _plain, st.sampled_from(HOSTILE + TRAVERSALS), _plain),
    # Anything goes.
    st.lists(st.one_of(st.sampled_from(PLAIN), st.sampled_from(HOSTILE), st.sampled_from(TRAVERSALS)), max_size=5),
)
raw_paths = st.builds(
    lambda prefix, tail, slash: "/" + "/".join(prefix + tail) + ("/" if slash else ""),
    st.sampled_from(PREFIXES),
    _tails,
    st.booleans(),
)
_F = TypeVar("_F", bound=Callable[..., Any])
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Known bypasses of other gateways, always tried first.
ATTACKS = [
    "/v1/servers/..",
    "/v1/servers/../invoices",
    "/v1/invoices/..%2fservers",
    "/v1/invoices/%2e%2e/servers",
    "/v1/invoices/%252e%252e%252fservers",
    "/v1/invoices/..;/servers",
    "/v1/invoices/..\\servers",
    "/v1/invoices/..%5cservers",
    "/v1/servers/x/..%2f..%2finvoices",
    "/api/v1/instances/i1/..%2f..%2fservers",
]


def with_attacks(test: _F) -> _F:
    for raw in ATTACKS:
        test = example(raw=raw, method="GET")(test)
    return test


@FAST
@with_attacks
@given(raw=raw_paths, method=st.sampled_from(METHODS))
def test_property_the_gateway_matches_what_the_policy_says_for_the_normalised_path(raw: str, method: str) -> None:
    """If split_path accepts a raw path, the segments the policy sees are those of its RFC 3986-normalised form,
    and Policy.match picks exactly the rule the slow reference picks for that form."""
    data = raw.encode("utf-8")
    try:
        segs = split_path(data)
    except PathError as exc:
        assert isinstance(exc, BadRequest) and exc.status == 400
        return
    expected_segs = upstream_segments(rfc3986_normalise(raw))
    assert segs == expected_segs, raw
    for p in (ERP, ALLY):
        assert p.match(method, segs) is reference_match(p.routes, method, expected_segs), raw


@FAST
@with_attacks
@given(raw=raw_paths, method=st.sampled_from(METHODS))
def test_property_nothing_under_servers_is_reachable_without_a_servers_scope(raw: str, method: str) -> None:
    """A path whose normalised form lies under /v1/servers/** is either refused (400), unmatched (denied), or
    matched by a rule that needs a servers: scope; never by a rule needing fewer scopes."""
    normalised = upstream_segments(rfc3986_normalise(raw))
    # Under /v1/servers by RFC 3986, or by the reading of an upstream that decodes before it splits.
    under_servers = normalised[:2] == ["v1", "servers"] or lenient_segments(raw)[:2] == ["v1", "servers"]
    try:
        segs = split_path(raw.encode("utf-8"))
    except PathError:
        return
    route = ERP.match(method, segs)
    if under_servers:
        assert route is None or (not route.public and any(s.startswith("servers:") for s in route.scopes)), raw
        # A key holding every scope of the file except the servers ones is never let through.
        others = frozenset(s for s in ERP.known_scopes if not s.startswith("servers:"))
        assert route is None or not all(grants(others, s) for s in route.scopes), raw
    elif route is not None:
        assert not any(s.startswith("servers:") for s in route.scopes), raw


# Every subtree of the shipped files and the scope family a rule under it must need.
SUBTREES = [
    (ERP, ("v1", "servers"), "servers:"),
    (ERP, ("v1", "instances"), "instances:"),
    (ERP, ("v1", "backups"), "backups:"),
    (ERP, ("v1", "teams"), "teams:"),
    (ERP, ("v1", "invoices"), "billing:"),
    (ALLY, ("api", "v1", "templates"), "templates:"),
    (ALLY, ("api", "v1", "definitions"), "definitions:"),
    (ALLY, ("api", "v1", "instances"), "instances:"),
    (ALLY, ("api", "v1", "servers"), "servers:"),
]


@FAST
@with_attacks
@given(raw=raw_paths, method=st.sampled_from(METHODS))
def test_property_no_protected_subtree_is_reachable_without_its_scope(raw: str, method: str) -> None:
    """The same for every subtree of both shipped files: a path that lies under one (by RFC 3986, or by a lenient
    upstream's reading) is refused, denied, or needs a scope of that subtree's family."""
    readings = (tuple(upstream_segments(rfc3986_normalise(raw))), tuple(lenient_segments(raw)))
    try:
        segs = split_path(raw.encode("utf-8"))
    except PathError:
        return
    for policy_, prefix, family in SUBTREES:
        if not any(r[: len(prefix)] == prefix for r in readings):
            continue
        route = policy_.match(method, segs)
        others = frozenset(s for s in policy_.known_scopes if not s.startswith(family))
        assert route is None or not all(grants(others, s) for s in route.scopes), (raw, family)
        assert route is None or not route.public, raw


# Raw bytes, and paths made of the fragments that make paths ambiguous.
_FRAGMENTS = ["/", ".", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%00", "%0a", "%7f", "%25", "%c0%ae", "%c0%af",
              "a", "~", ";", "\\", "\x00", "\x7f", "%"]
_hostile_paths = st.one_of(
    st.binary(max_size=40),
    st.lists(st.sampled_from(_FRAGMENTS), max_size=12).map(lambda f: "".join(f).encode("utf-8")),
).map(lambda b: b"/" + b)


@settings(max_examples=200, deadline=None)
@given(raw=_hostile_paths)
def test_property_split_path_refuses_or_returns_clean_segments(raw: bytes) -> None:
    try:
        segs = split_path(raw)
    except PathError as exc:
        assert exc.status == 400
        return
    for seg in segs:
        assert seg not in ("", ".", "..")
        assert "/" not in seg and "\\" not in seg
        assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in seg)


@settings(max_examples=100, deadline=None)
@given(raw=raw_paths)
def test_property_split_path_on_generated_paths_returns_clean_segments(raw: str) -> None:
    try:
        segs = split_path(raw.encode("utf-8"))
    except PathError:
        return
    for seg in segs:
        assert seg not in ("", ".", "..")
        assert "/" not in seg and "\\" not in seg
        assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in seg)


# Random policies against the reference: the trie's backtracking and precedence, on small alphabets so that
# overlapping rules are common.
_template_segments = st.lists(st.sampled_from(["a", "b", "{p}"]), max_size=3)
_rules = st.lists(
    st.tuples(_template_segments, st.booleans(), st.sets(st.sampled_from(["GET", "POST", "*"]), min_size=1)),
    min_size=1,
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(
    rules=_rules,
    path=st.lists(st.sampled_from(["a", "b", "c"]), max_size=4),
    method=st.sampled_from(["GET", "POST"]),
)
def test_property_match_is_the_most_specific_rule(
    rules: list[tuple[list[str], bool, set[str]]], path: list[str], method: str
) -> None:
    routes = []
    for i, (segs, subtree, methods) in enumerate(rules):
        # Parameter names must differ within a template; the matcher ignores them.
        parts = [f"{{p{j}}}" if seg == "{p}" else seg for j, seg in enumerate(segs)] + (["**"] if subtree else [])
        template = "/" + "/".join(parts)
        routes.append({"path": template, "methods": sorted(methods), "scopes": [f"rule:r{i}"]})
    try:
        p = parse_policy({"routes": routes}, "random.yaml")
    except PolicyError as exc:
        assert "is defined twice" in str(exc)
        assume(False)
        return
    assert p.match(method, path) is reference_match(p.routes, method, path)


def test_match_path_gives_match_s_answer_remembers_it_and_stays_bounded() -> None:
    import gateway.policy.rules as policies

    p = load_policy(Path(__file__).resolve().parents[2] / "policies" / "deployerp.yaml")
    for method, raw in (("GET", b"/v1/servers"), ("GET", b"/v1/servers/srv_1/"), ("DELETE", b"/v1/servers/x"),
                        ("GET", b"/nowhere"), ("GET", b"/v1/servers/srv%5F1")):
        segments, route = p.match_path(method, raw)
        assert segments == split_path(raw) and route == p.match(method, segments)
        assert p.match_path(method, raw) is p._memo[(method, raw)]  # the second answer is the remembered one
    with pytest.raises(PathError):
        p.match_path("GET", b"/v1/../servers")
    assert ("GET", b"/v1/../servers") not in p._memo
    for i in range(policies._MEMO_SIZE + 10):
        p.match_path("GET", b"/v1/servers/s%d" % i)
    assert len(p._memo) <= policies._MEMO_SIZE
