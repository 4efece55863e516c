"""``gateway users``: dashboard users (gateway.accounts), managed directly on the store.

    gateway users create EMAIL --role ROLE [--password-stdin]
    gateway users list
    gateway users disable EMAIL          (its sessions end: every refresh token is revoked)
    gateway users enable EMAIL
    gateway users reset EMAIL [--password-stdin]

A password is never an argument (argv is visible to every user of the machine, and kept in shell histories): it is
asked for twice on the terminal (getpass), or read as the first line of standard input with ``--password-stdin``.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Callable
from typing import Any

from gateway.accounts import Accounts, User
from gateway.config.settings import Settings
from gateway.errors import GatewayError
from gateway.keys.record import to_iso


class PasswordError(Exception):
    """The password could not be read (no terminal, the two entries differ, nothing on stdin)."""


def read_password(from_stdin: bool, confirm: bool = True) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise PasswordError("--password-stdin: nothing on standard input")
        return line.removesuffix("\n").removesuffix("\r")
    if not sys.stdin.isatty():
        raise PasswordError("no terminal to ask for the password on; pipe it in with --password-stdin")
    first = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Password (again): ") != first:
        raise PasswordError("the two passwords differ")
    return first


def add_parser(sub: Any, with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    users = sub.add_parser("users", help="manage dashboard users (directly on the store)")
    usub = users.add_subparsers(dest="users_cmd", required=True, metavar="ACTION")

    def action(name: str, help: str) -> argparse.ArgumentParser:
        p = with_config(usub.add_parser(name, help=help))
        p.add_argument("--json", action="store_true", help="print JSON")
        return p

    create = action("create", "create a user (the password is asked for, or read with --password-stdin)")
    create.add_argument("email")
    create.add_argument("--role", required=True, help="a role of the policy's roles: section (admin, developer, "
                                                      "viewer in the shipped policies)")
    create.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    action("list", "list users (never their password hashes)")
    disable = action("disable", "disable a user and end its sessions")
    disable.add_argument("email")
    enable = action("enable", "enable a disabled user")
    enable.add_argument("email")
    reset = action("reset", "set a new password (same rules) and end the user's sessions")
    reset.add_argument("email")
    reset.add_argument("--password-stdin", action="store_true", help="read the password from standard input")


def _doc(user: User) -> dict[str, Any]:
    return {"id": user.id, "email": user.email, "role": user.role, "status": user.status,
            "created_at": to_iso(user.created_at), "last_login_at": to_iso(user.last_login_at)}


def _table(users: list[User]) -> str:
    if not users:
        return "No users yet: create one with 'gateway users create EMAIL --role ROLE'."
    lines = [f"{'ID':<26} {'EMAIL':<32} {'ROLE':<10} {'STATUS':<9} LAST LOGIN"]
    for u in users:
        lines.append(f"{u.id:<26} {u.email:<32} {u.role:<10} {u.status:<9} {to_iso(u.last_login_at) or '-'}")
    return "\n".join(lines)


async def run(args: argparse.Namespace, settings: Settings) -> tuple[Any, str]:
    """The command's (JSON document, text). Raises GatewayError (a refused input), PasswordError, StoreError."""
    from gateway.admin.api import build_policy
    from gateway.doors.assembly import build_accounts
    from gateway.keys.backends import open_store

    policy = build_policy(settings)
    store = open_store(settings)
    try:
        accounts: Accounts = build_accounts(settings, store, lambda: policy)
        cmd = args.users_cmd
        if cmd == "create":
            password = read_password(args.password_stdin)
            user = await accounts.create_user(args.email, password, args.role)
            return _doc(user), f"Created {user.id} ({user.email}, {user.role})."
        if cmd == "list":
            users = await accounts.list_users()
            return [_doc(u) for u in users], _table(users)
        if cmd == "disable":
            user = await accounts.disable_user(args.email)
            return _doc(user), f"Disabled {user.id} ({user.email}); its refresh tokens are revoked."
        if cmd == "enable":
            user = await accounts.enable_user(args.email)
            return _doc(user), f"Enabled {user.id} ({user.email})."
        user = await accounts.get_user(args.email)  # reset: unknown users are named before the password is asked
        password = read_password(args.password_stdin)
        user = await accounts.reset_password(args.email, password)
        return _doc(user), f"New password set for {user.id} ({user.email}); its sessions are ended."
    finally:
        await store.close()


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``gateway users ...``; 0, or 1 for a refusal (printed, naming the problem), 2 for bad input."""
    try:
        doc, text = asyncio.run(run(args, settings))
    except PasswordError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        print(f"gateway: {exc.message}", file=sys.stderr)
        return 2 if exc.status == 422 else 1
    print(json.dumps(doc, indent=2) if args.json else text)
    return 0
