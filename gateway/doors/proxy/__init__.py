"""Front door 1, the reverse proxy: the guarded HTTP server protocol, the per-request pipeline and the upstream
forwarder."""
