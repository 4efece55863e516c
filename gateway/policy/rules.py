"""Scope-to-route policies, read from YAML and compiled once into a segment trie.

A policy file::

    routes:
      - path: /v1/servers            # literal segments
        methods: [GET]
        scopes: [servers:read]       # every listed scope is needed
      - path: /v1/servers/{id}       # {name} matches exactly one non-empty segment
        methods: [PATCH, POST]
        scopes: [servers:write]
      - path: /v1/docs/**            # a trailing /** matches the path itself and everything below it
        methods: [GET]
        public: true                 # no credential needed
    scopes: [api-keys:read]          # optional: more scopes keys may hold (the routes' own are always known)
    roles:                           # optional: dashboard users' roles (gateway.accounts) and the scopes each holds
      admin: [servers:*, api-keys:read, api-keys:write]
      viewer: [servers:read]

Matching: the most specific template wins, segment by segment (a literal beats ``{param}``, which beats
``/**``); among those, the rule must list the method (or ``"*"``). Anything no rule matches is denied.
Methods are case-sensitive, as HTTP says.

Scopes held by a key match a needed scope exactly or by wildcard: ``instances:*`` covers every scope that
starts with ``instances:`` and ``*`` covers all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.config.settings import Settings, resolve_path
from gateway.policy.paths import split_path

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
SCOPE_RE = re.compile(r"^(\*|[a-z0-9][a-z0-9_.-]*(:[a-z0-9][a-z0-9_.-]*)*(:\*)?)$")
_PARAM_RE = re.compile(r"^\{[A-Za-z_][A-Za-z0-9_]*\}$")
_LITERAL_RE = re.compile(r"^[A-Za-z0-9._~!$&'()*+,=:@-]+$")
ANY_METHOD = "*"
CREDENTIALS = frozenset({"api_key", "jwt"})


class PolicyError(Exception):
    """A policy file is invalid; the message names the file and the rule."""


@dataclass(frozen=True, slots=True)
class Route:
    template: str
    methods: frozenset[str]
    scopes: tuple[str, ...] = ()
    public: bool = False
    # Answered by the gateway itself (the key-management API), not forwarded. Never from a policy file.
    internal: bool = False
    # Which credentials the route accepts: api_key, jwt.
    credentials: frozenset[str] = frozenset({"api_key"})


@dataclass(slots=True)
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    param: _Node | None = None
    rules: dict[str, Route] = field(default_factory=dict)
    subtree: dict[str, Route] = field(default_factory=dict)


def grants(permissions: frozenset[str], scope: str) -> bool:
    """Whether a key holding ``permissions`` has ``scope`` (exactly, or through a wildcard)."""
    if scope in permissions or "*" in permissions:
        return True
    i = scope.find(":")
    while i != -1:
        if scope[: i + 1] + "*" in permissions:
            return True
        i = scope.find(":", i + 1)
    return False


def valid_scope(scope: str) -> bool:
    return bool(SCOPE_RE.match(scope))


_MEMO_SIZE = 4096


class Policy:
    """A compiled policy. :meth:`match_path` (or :meth:`match`) is the only thing called per request."""

    def __init__(self, routes: Sequence[Route], extra_scopes: Iterable[str] = (), source: str = "<policy>",
                 roles: Mapping[str, Iterable[str]] | None = None):
        self.routes = tuple(routes)
        self.source = source
        self._extra_scopes = tuple(extra_scopes)
        # Role name -> the scopes a dashboard user of that role holds (wildcards as in a key's permissions).
        self.roles: dict[str, frozenset[str]] = {name: frozenset(s) for name, s in (roles or {}).items()}
        self._root = _Node()
        for i, route in enumerate(self.routes):
            self._insert(route, i)
        self.known_scopes = frozenset(s for r in self.routes for s in r.scopes) | frozenset(self._extra_scopes)
        # (method, raw path) -> (segments, route): the same few paths make up most traffic. Bounded; cleared
        # when full. A reload builds a new Policy, so the memo never outlives the routes it was made from.
        self._memo: dict[tuple[str, bytes], tuple[list[str], Route | None]] = {}

    def with_routes(self, routes: Sequence[Route]) -> Policy:
        """This policy plus ``routes`` (the gateway's own endpoints); a clash with a file rule is an error."""
        return Policy((*self.routes, *routes), self._extra_scopes, self.source, self.roles)

    def _insert(self, route: Route, index: int) -> None:
        node = self._root
        segments = route.template.strip("/").split("/") if route.template != "/" else []
        subtree = bool(segments) and segments[-1] == "**"
        if subtree:
            segments = segments[:-1]
        for seg in segments:
            if _PARAM_RE.match(seg):
                node.param = node.param or _Node()
                node = node.param
            else:
                node = node.children.setdefault(seg, _Node())
        table = node.subtree if subtree else node.rules
        for method in route.methods:
            if method in table:
                if route.internal:  # the gateway's own endpoints are added after the file's rules
                    raise PolicyError(
                        f"{self.source}: {method} {route.template} clashes with the gateway's own endpoint "
                        "(move the rule, or change management.prefix)"
                    )
                raise PolicyError(f"{self.source}: routes[{index}]: {method} {route.template} is defined twice")
            table[method] = route

    def match_path(self, method: str, raw_path: bytes) -> tuple[list[str], Route | None]:
        """:func:`gateway.policy.paths.split_path` then :meth:`match`, remembered per method and raw path. Raises
        PathError (400) for an ambiguous path, as split_path does (such paths are never remembered)."""
        key = (method, raw_path)
        found = self._memo.get(key)
        if found is None:
            segments = split_path(raw_path)
            found = (segments, self.match(method, segments))
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = found
        return found

    def match(self, method: str, segments: Sequence[str]) -> Route | None:
        """The route for ``method`` and the (already percent-decoded) path ``segments``, or None."""
        return self._walk(self._root, segments, 0, method)

    def _walk(self, node: _Node, segs: Sequence[str], i: int, method: str) -> Route | None:
        if i == len(segs):
            hit = node.rules.get(method) or node.rules.get(ANY_METHOD)
            if hit is not None:
                return hit
        else:
            child = node.children.get(segs[i])
            if child is not None:
                hit = self._walk(child, segs, i + 1, method)
                if hit is not None:
                    return hit
            if node.param is not None and segs[i]:
                hit = self._walk(node.param, segs, i + 1, method)
                if hit is not None:
                    return hit
        if node.subtree:
            return node.subtree.get(method) or node.subtree.get(ANY_METHOD)
        return None

    def knows_scope(self, scope: str) -> bool:
        """Whether ``scope`` (possibly a wildcard) names something this policy knows."""
        if scope == "*" or scope in self.known_scopes:
            return True
        if scope.endswith(":*"):
            head = scope[:-1]
            return any(s.startswith(head) for s in self.known_scopes)
        return False

    def describe(self) -> list[str]:
        lines = []
        for r in self.routes:
            methods = ",".join(sorted(r.methods))
            need = "public" if r.public else " + ".join(r.scopes) or "any credential"
            if r.internal:
                need += " (gateway)"
            lines.append(f"{methods:<24} {r.template:<40} {need}")
        return lines


def _as_list(value: Any, where: str, what: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise PolicyError(f"{where}: {what} must be a string or a non-empty list of strings")


def _check_template(template: Any, where: str) -> str:
    if not isinstance(template, str) or not template.startswith("/"):
        raise PolicyError(f"{where}: path must be a string starting with '/'")
    if template == "/":
        return template
    segments = template.rstrip("/").split("/")[1:] if template != "/**" else ["**"]
    names: set[str] = set()
    for n, seg in enumerate(segments):
        if seg == "**":
            if n != len(segments) - 1:
                raise PolicyError(f"{where}: '/**' may only end a path ({template})")
        elif _PARAM_RE.match(seg):
            if seg in names:
                raise PolicyError(f"{where}: parameter {seg} used twice in {template}")
            names.add(seg)
        elif not seg or seg in (".", "..") or not _LITERAL_RE.match(seg) or "*" in seg:
            raise PolicyError(f"{where}: invalid path segment {seg!r} in {template}")
    return template.rstrip("/") or "/"


def _rule(raw: Any, where: str) -> Route:
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where}: each rule must be a mapping with path, methods and scopes")
    unknown = set(raw) - {"path", "methods", "scopes", "public", "description", "credentials"}
    if unknown:
        raise PolicyError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    template = _check_template(raw.get("path"), where)
    methods = _as_list(raw.get("methods", ANY_METHOD), where, "methods")
    for m in methods:
        if m != ANY_METHOD and m not in KNOWN_METHODS:
            raise PolicyError(f"{where}: unknown method {m!r} (methods are upper-case: GET, POST, ...)")
    public = raw.get("public", False)
    if not isinstance(public, bool):
        raise PolicyError(f"{where}: public must be true or false")
    scopes: list[str] = []
    if "scopes" in raw:
        scopes = _as_list(raw["scopes"], where, "scopes")
        for s in scopes:
            if not valid_scope(s) or "*" in s:
                raise PolicyError(f"{where}: invalid scope {s!r} (a rule names exact scopes like servers:read)")
    if public and scopes:
        raise PolicyError(f"{where}: a public rule cannot also require scopes")
    if not public and not scopes:
        raise PolicyError(f"{where}: give scopes, or public: true")
    credentials = _as_list(raw.get("credentials", ["api_key"]), where, "credentials")
    for c in credentials:
        if c not in CREDENTIALS:
            raise PolicyError(f"{where}: unknown credential {c!r} (use {', '.join(sorted(CREDENTIALS))})")
    return Route(template=template, methods=frozenset(methods), scopes=tuple(scopes), public=public,
                 credentials=frozenset(credentials))


def parse_policy(doc: Any, source: str = "<policy>") -> Policy:
    if not isinstance(doc, Mapping):
        raise PolicyError(f"{source}: the top level must be a mapping with a 'routes' list")
    unknown = set(doc) - {"routes", "scopes", "version", "description", "roles"}
    if unknown:
        raise PolicyError(f"{source}: unknown top-level field {sorted(unknown)[0]!r}")
    rules = doc.get("routes")
    if not isinstance(rules, list) or not rules:
        raise PolicyError(f"{source}: 'routes' must be a non-empty list")
    routes = [_rule(r, f"{source}: routes[{i}]") for i, r in enumerate(rules)]
    extra = doc.get("scopes", [])
    if not isinstance(extra, list) or not all(isinstance(s, str) and valid_scope(s) for s in extra):
        raise PolicyError(f"{source}: 'scopes' must be a list of scope names")
    policy = Policy(routes, extra, source)
    roles = _roles(doc.get("roles", {}), policy, source)
    return Policy(routes, extra, source, roles) if roles else policy


_ROLE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


def _roles(raw: Any, policy: Policy, source: str) -> dict[str, list[str]]:
    """The ``roles:`` section: each role a list of scopes the policy knows (a wildcard must cover one)."""
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{source}: 'roles' must map role names to lists of scopes")
    roles: dict[str, list[str]] = {}
    for name, scopes in raw.items():
        where = f"{source}: roles.{name}"
        if not isinstance(name, str) or not _ROLE_RE.match(name):
            raise PolicyError(f"{source}: roles: invalid role name {name!r} (lower-case letters, digits, '-', '_')")
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise PolicyError(f"{where}: must be a list of scopes")
        for s in scopes:
            if not valid_scope(s):
                raise PolicyError(f"{where}: invalid scope {s!r}")
            if not policy.knows_scope(s):
                raise PolicyError(f"{where}: scope {s!r} is not one the policy knows (add it to a route or 'scopes')")
        roles[name] = list(scopes)
    return roles


def load_policy(path: str | Path) -> Policy:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"{p}: policy file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{p}: cannot read: {exc.__class__.__name__}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise PolicyError(f"{p}: not valid YAML{where}") from None
    return parse_policy(doc, str(p))


PROJECT_ROOT = Path(__file__).resolve().parent.parent


def policy_path(settings: Settings) -> Path:
    """The policy file: relative to the config file, else to the project (the shipped ``policies/``)."""
    path = resolve_path(settings, settings.policies)
    if not path.exists() and not Path(settings.policies).is_absolute():
        shipped = PROJECT_ROOT / settings.policies
        if shipped.exists():
            return shipped
    return path
