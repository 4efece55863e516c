"""What `gateway serve` runs around the app: the uvicorn options, hot reload, graceful shutdown."""
