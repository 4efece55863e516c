"""placeholder"""
from __future__ import annotations
from typing import Any
def openapi_routes(settings: Any) -> dict[str, Any]:
    return {}
