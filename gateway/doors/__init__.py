"""Front doors over the gate: the reverse proxy, the ASGI middleware and the forward-auth endpoint."""
