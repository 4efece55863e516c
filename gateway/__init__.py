"""API-key authentication gateway: authenticate, authorise and stream every request to the upstream."""

__version__ = "0.1.0"
