"""Dashboard users (docs/users.md): accounts with argon2id passwords and roles from the policy, the gateway's
own login / refresh / logout, and the ES256 JWTs it signs and publishes at ``/.well-known/jwks.json``.

    Accounts      users, logins and sessions (gateway.accounts.service)
    User          a user as shown (no password hash)
    Session       a login's or refresh's answer: token, expires_at, refresh_token
    Principal     the user of a verified token, as the gate and the management API see it

Built by gateway.doors.assembly.build_accounts from the settings; the login endpoints are gateway.doors.login.
"""

from __future__ import annotations

from gateway.accounts.service import Accounts, Session, User
from gateway.accounts.tokens import Principal

__all__ = ["Accounts", "Principal", "Session", "User"]
