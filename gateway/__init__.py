"""API-key authentication gateway: authenticate, authorise and stream every request to the upstream.

``from gateway import AuthMiddleware`` puts the same gate inside a Starlette, FastAPI or any ASGI application
(:mod:`gateway.doors.middleware`); it is imported on first use, so ``import gateway`` (the CLI) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["AuthMiddleware", "GatewayUser", "RequireScope", "__version__"]

if TYPE_CHECKING:
    from gateway.doors.middleware import AuthMiddleware, GatewayUser, RequireScope

_LAZY = {"AuthMiddleware", "GatewayUser", "RequireScope"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from gateway.doors import middleware

        return getattr(middleware, name)
    raise AttributeError(f"module 'gateway' has no attribute {name!r}")
