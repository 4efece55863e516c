"""CORS for the reverse proxy: the Fetch standard's CORS protocol (https://fetch.spec.whatwg.org/#http-cors-protocol).

Built once from ``cors`` settings (:class:`gateway.config.settings.CorsSettings`); per request the proxy makes
one dict lookup on the ``Origin`` header.

* A CORS preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``, Fetch 3.2.2) is answered
  by the gateway itself, with no key: 204 with the ``Access-Control-Allow-*`` headers when the origin, the
  method and every requested header are allowed; otherwise 403 ``cors_preflight_refused`` without any CORS
  header, so the browser's CORS check fails (Fetch 4.8, 4.9). Starlette's CORSMiddleware answers such a
  preflight 400 ("Disallowed CORS ..."); Envoy's CORS filter passes it on to the upstream. GET, HEAD and POST
  pass the method check whatever ``allow_methods`` says, as in the browser (CORS-safelisted methods, Fetch 2.2.1).
* Every other answer (forwarded, or the gateway's own: 401, 403, 429 ...) to an allowed origin carries
  ``Access-Control-Allow-Origin`` (that origin), ``Access-Control-Expose-Headers`` and, with
  ``allow_credentials``, ``Access-Control-Allow-Credentials: true``. Since the answer depends on ``Origin``,
  every answer, those without an ``Origin`` included, carries ``Vary: Origin`` (Fetch 3.2.5). With ``*`` (never
  with credentials) every answer carries ``Access-Control-Allow-Origin: *`` and no ``Vary``. A disallowed
  origin gets no CORS header: the browser keeps the answer from the page.
* The upstream's own ``Access-Control-*`` response headers are dropped (:data:`UPSTREAM_CORS`): the gateway
  speaks for the origin, and two ``Access-Control-Allow-Origin`` headers fail the browser's check.
"""

from __future__ import annotations

from gateway.config.settings import CorsSettings
from gateway.errors import GatewayError, render

Header = tuple[bytes, bytes]

ORIGIN = b"origin"
REQUEST_METHOD = b"access-control-request-method"
REQUEST_HEADERS = b"access-control-request-headers"
_ALLOW_ORIGIN = b"access-control-allow-origin"
_VARY_ORIGIN: Header = (b"vary", b"Origin")
_SAFELISTED_METHODS = frozenset({b"GET", b"HEAD", b"POST"})

# Response headers of the upstream that the gateway replaces with its own when CORS is on.
UPSTREAM_CORS = frozenset({
    _ALLOW_ORIGIN, b"access-control-allow-credentials", b"access-control-expose-headers",
    b"access-control-allow-methods", b"access-control-allow-headers", b"access-control-max-age",
})


class CorsPreflightRefused(GatewayError):
    status, code, ally_code = 403, "cors_preflight_refused", "FORBIDDEN"


class Cors:
    """The CORS headers of every answer, computed at start-up, and the preflight answers."""

    def __init__(self, settings: CorsSettings, error_format: str) -> None:
        self.wildcard = "*" in settings.allow_origins
        credentials: tuple[Header, ...] = (
            ((b"access-control-allow-credentials", b"true"),) if settings.allow_credentials else ())
        expose: tuple[Header, ...] = (
            ((b"access-control-expose-headers", ", ".join(settings.expose_headers).encode()),)
            if settings.expose_headers else ())
        origins = [o.encode() for o in settings.allow_origins if o != "*"]
        # What an answer to a request from each allowed origin carries; ``other``, the rest.
        self.other: tuple[Header, ...] = ((_ALLOW_ORIGIN, b"*"), *expose) if self.wildcard else (_VARY_ORIGIN,)
        self._by_origin: dict[bytes, tuple[Header, ...]] = {
            o: ((_ALLOW_ORIGIN, o), *credentials, *expose, _VARY_ORIGIN) for o in origins}
        self._preflight_head: dict[bytes, tuple[Header, ...]] = {
            o: ((_ALLOW_ORIGIN, o), *credentials, _VARY_ORIGIN) for o in origins}
        self._any_method = "*" in settings.allow_methods
        self._methods = frozenset(m.encode() for m in settings.allow_methods) | _SAFELISTED_METHODS
        self._methods_value = ", ".join(m for m in settings.allow_methods if m != "*").encode()
        self._any_header = "*" in settings.allow_headers
        self._headers = frozenset(h.lower().encode() for h in settings.allow_headers)
        self._headers_value = ", ".join(h for h in settings.allow_headers if h != "*").encode()
        self._max_age = (b"access-control-max-age", str(settings.max_age).encode())
        self.refused = render(CorsPreflightRefused(), error_format, () if self.wildcard else (_VARY_ORIGIN,))

    def actual(self, origin: bytes | None) -> tuple[Header, ...]:
        """The CORS headers of an answer to a request with this ``Origin`` (None: none sent)."""
        if origin is None:
            return self.other
        return self._by_origin.get(origin, self.other)

    def preflight(self, origin: bytes, method: bytes, requested: list[bytes]) -> list[Header] | None:
        """The headers of a 204 answer to an allowed preflight, or None: refused (Fetch 4.8)."""
        if self.wildcard:
            head: tuple[Header, ...] = ((_ALLOW_ORIGIN, b"*"),)
        else:
            found = self._preflight_head.get(origin)
            if found is None:
                return None
            head = found
        if not self._any_method and method not in self._methods:
            return None
        names = [t for t in (t.strip(b" \t").lower() for t in b",".join(requested).split(b",")) if t]
        if not self._any_header and any(n not in self._headers for n in names):
            return None
        out = [*head, self._max_age,
               (b"access-control-allow-methods", method if self._any_method else self._methods_value)]
        if self._any_header:
            if names:
                out.append((b"access-control-allow-headers", b", ".join(names)))
        elif self._headers_value:
            out.append((b"access-control-allow-headers", self._headers_value))
        if self._any_method or self._any_header:
            # The answer then depends on what was asked, too (Fetch 3.2.5).
            out.append((b"vary", b"Access-Control-Request-Method, Access-Control-Request-Headers"))
        return out
