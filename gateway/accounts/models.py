"""The login endpoints' bodies and answer as pydantic models (gateway.doors.login reads and answers with them;
gateway.admin.openapi describes the endpoints from their JSON Schema), here so both layers can import them.

    LoginBody      POST {prefix}/auth/login     {"email", "password"}
    RefreshBody    POST {prefix}/auth/refresh   and   POST {prefix}/auth/logout   {"refresh_token"}
    SessionTokens  the answer of login and refresh: token, expires_at, refresh_token
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    # Fields a client adds beyond these (a dashboard's "remember me") are ignored, not refused.
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)


class LoginBody(_Body):
    """A login: the user's address and password."""

    email: str = Field(examples=["usuario@exemplo.com"], description="the user's e-mail address (any case)")
    password: str = Field(description="the user's password (never logged)")


class RefreshBody(_Body):
    """A refresh token: spent by a refresh (which answers its successor), or revoked with its login by logout."""

    refresh_token: str = Field(description="the refresh token of the last login or refresh")


class SessionTokens(BaseModel):
    """A login's or refresh's answer. Sent with `Cache-Control: no-store`."""

    model_config = ConfigDict(extra="forbid")

    token: str = Field(examples=["eyJ..."], description="the access token: an ES256 JWT, `Authorization: Bearer` it")
    expires_at: datetime = Field(description="when the token expires (UTC, at most 24 hours on)")
    refresh_token: str = Field(description="good for one refresh: `POST .../auth/refresh` answers the next one")
