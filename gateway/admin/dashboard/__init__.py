"""The dashboard in a browser (docs/dashboard.md): server-rendered pages where a user logs in and manages API keys,
served by the gateway itself under ``dashboard.path``. :class:`Dashboard` is the ASGI app; its pages are
templates/, its stylesheet and copy-button script static/ (package data: an installed wheel has them)."""

from __future__ import annotations

from gateway.admin.dashboard.app import Dashboard

__all__ = ["Dashboard"]
