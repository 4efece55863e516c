"""The gateway's ASGI app for granian (``loadtests/serve_for_bench.sh`` with ``GW_SERVER=granian``): a benchmark
entry point, not a supported way to run the gateway.

granian imports ``granian_app:app`` (from loadtests/) with ``--factory`` in its worker and calls :func:`app`. The
settings come from the file named by ``GATEWAY_SERVE_CONFIG`` (as for ``gateway serve --workers``), and the
logging is set up as ``gateway serve`` sets it up (JSON access line per request), so both servers do the same
work per request. What granian does not have is the guarded HTTP protocol of gateway/doors/proxy/protocol.py
(the raw-target, version, head-size and head-deadline checks): see loadtests/RESULTS.md.
"""

from __future__ import annotations

import os
from typing import Any


def app() -> Any:
    """Build the gateway's ASGI app from ``GATEWAY_SERVE_CONFIG`` with ``gateway serve``'s logging."""
    from gateway.config.settings import load_settings
    from gateway.observability.logging import configure_logging
    from gateway.workers import CONFIG_ENV, app_factory

    configure_logging(load_settings(os.environ.get(CONFIG_ENV)).ops.log_format)
    return app_factory()
