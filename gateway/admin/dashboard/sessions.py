"""What the dashboard needs of user accounts (gateway.accounts.Accounts provides it): log in, renew, log out,
and tell who holds an access token. Written as protocols so the dashboard depends on the shape, not the module."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date, datetime
from typing import Protocol

from gateway.network import IPAddress


class UserSession(Protocol):
    @property
    def token(self) -> str: ...
    @property
    def expires_at(self) -> datetime: ...
    @property
    def refresh_token(self) -> str: ...


class User(Protocol):
    @property
    def user_id(self) -> str: ...
    @property
    def email(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def scopes(self) -> frozenset[str]: ...


class Accounts(Protocol):
    async def login(self, email: str, password: str, client: IPAddress) -> UserSession: ...
    async def refresh(self, refresh_token: str, client: IPAddress) -> UserSession: ...
    async def logout(self, refresh_token: str) -> None: ...
    async def principal(self, token: str) -> User | None: ...


# store.usage_by_day: a key's requests per day over the last ``days`` days (days without any may be left out).
UsageByDay = Callable[[str, int], Awaitable[list[tuple[date, int]]]]
