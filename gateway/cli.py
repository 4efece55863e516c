"""The ``gateway`` command: serve, demo, keys, users and policy.

Exit status: 0 on success, 1 when an operation cannot be done (unknown key id, store trouble), 2 for bad
configuration or bad arguments. Messages name the problem; they never contain a key value except the one
line of ``keys create`` that shows a new key once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from gateway import __version__
from gateway.config.settings import ConfigError, Settings, load_settings
from gateway.keys.record import KeyRecord, to_iso, utcnow
from gateway.keys.sealing import SealError
from gateway.keys.service import (
    KeyInputError,
    NothingHeld,
    create_key,
    grace_for,
    reveal_value,
    revoke_key,
    rotate_key,
    update_key,
)
from gateway.keys.store import Conflict, StoreError
from gateway.policy.rules import PolicyError, load_policy

if TYPE_CHECKING:
    from pydantic import BaseModel

    from gateway.admin.models import KeyModels
    from gateway.doors.assembly import Components

    M = TypeVar("M", bound=BaseModel)

# gateway.app (the pipeline, aiohttp, uvicorn) is imported only by the commands that need it: a refused
# configuration, `policy check` or `--help` answer without paying for it.

DEFAULT_CONFIG = "config.yaml"


class CLIError(Exception):
    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _settings(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Settings:
    explicit = args.config is not None
    return load_settings(args.config if explicit else DEFAULT_CONFIG, required=explicit, overrides=overrides)


def _components(settings: Settings) -> Components:
    from gateway.doors.assembly import build_components

    components = build_components(settings)
    if components.pepper_created:
        print(
            f"gateway: created a new server secret in {components.pepper.source} (mode 600). Keep it and back it"
            " up: keys cannot be checked without it.",
            file=sys.stderr,
        )
    return components


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# --- serve ----------------------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.host:
        overrides.setdefault("listen", {})["host"] = args.host
    if args.port:
        overrides.setdefault("listen", {})["port"] = args.port
    if args.workers:
        overrides.setdefault("listen", {})["workers"] = args.workers
    settings = _settings(args, overrides)  # a bad configuration stops here, before the heavy imports
    from gateway.observability.logging import configure_logging, event

    # JSON lines by default, uvicorn's own lines included; set before the store opens, so what it warns of
    # (a store file others can read, docs/security.md) is a line like every other.
    configure_logging(settings.ops.log_format)
    components = _components(settings)

    from gateway.app import create_app
    from gateway.redisurl import redacted

    upstream = redacted(settings.upstream.url)  # a password in the upstream URL stays out of the log
    event(
        logging.getLogger("gateway"), "start",
        f"gateway {__version__} listening on {settings.listen.host}:{settings.listen.port}, forwarding to"
        f" {upstream}, policy {components.policy.source} ({len(components.policy.routes)} routes)",
        version=__version__, host=settings.listen.host, port=settings.listen.port, upstream=upstream,
        policy=str(components.policy.source), routes=len(components.policy.routes),
        workers=settings.listen.workers,
    )
    from gateway.workers import drift_warnings

    for warning in drift_warnings(settings):
        logging.getLogger("gateway").warning(warning)
    if settings.listen.workers > 1:
        return _serve_workers(args, settings, components, overrides)
    # A reload re-reads the same file with the same flags and environment (gateway/serving/reload.py).
    app = create_app(settings, components, reload_settings=lambda: _settings(args, overrides))
    from gateway.serving.server import server_config
    from gateway.serving.shutdown import GracefulServer

    # The guarded protocol and its limits, the client address from the socket (gateway/serving/server.py).
    config = server_config(settings, app)
    # SIGTERM: readiness 503, ops.drain_seconds of serving, listener closed, in-flight requests finish,
    # usage flushed, sessions closed, exit 0 (gateway/serving/shutdown.py).
    GracefulServer(config, app.health.start_draining, settings.ops.drain_seconds).run()
    return 0


def _serve_workers(args: argparse.Namespace, settings: Settings, components: Components,
                   overrides: dict[str, Any]) -> int:
    """uvicorn's worker processes: each rebuilds the app from the same configuration (gateway.workers)."""
    from gateway.workers import serve, worker_environment

    asyncio.run(components.store.close())  # each worker opens its own
    os.environ.update(worker_environment(args.config or DEFAULT_CONFIG, overrides))
    return serve(settings)


# --- demo -----------------------------------------------------------------------------------------------------

# (kind, name, permissions, allowlist, environment) of the keys each demo makes.
DemoKey = tuple[str, str, list[str], list[str], str]
DEMO_KEYS: dict[str, tuple[DemoKey, ...]] = {
    "deployerp": (
        ("read-only", "monitoring-key", ["servers:read", "instances:read", "backups:read"], [], "live"),
        ("deployment", "deployment-key", ["servers:read", "instances:*", "backups:*"], ["127.0.0.0/8", "::1"], "live"),
        ("admin", "admin-key", ["*"], [], "live"),
    ),
    # The DeployAlly guide's examples: its "CI/CD Pipeline" key, its "Servidor Produção" key with an IP allowlist,
    # an admin, and a test key (da_test_), which goes to the test upstream.
    "deployally": (
        ("ci-cd", "CI/CD Pipeline", ["templates:read", "definitions:read", "definitions:write", "deployments:create"],
         [], "live"),
        ("server", "Servidor Produção", ["instances:read", "instances:manage", "servers:manage"],
         ["127.0.0.0/8", "::1"], "live"),
        ("admin", "admin-key", ["*"], [], "live"),
        ("test", "dev-key", ["templates:read"], [], "test"),
    ),
}


def _listen(host: str, port: int) -> socket.socket:
    """Bind the demo's listening socket before anything is printed, so a taken port fails first and plainly."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror} (is the port taken? use --port)") from None
    sock.listen(2048)
    return sock


def _demo_settings(platform: str, port: int, upstream_url: str, data_dir: Path) -> dict[str, Any]:
    """The demo's configuration: deployERP's defaults, or the DeployAlly format, keys, paths and policy with the
    gateway's own dashboard login (accounts: the guide's demo user, whose password "senha" is 5 characters) and a
    test upstream for da_test_ keys."""
    settings: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "upstream": {"url": upstream_url},
        "store": {"url": f"sqlite:///{data_dir / 'keys.db'}"},
    }
    if platform == "deployally":
        settings["upstream"]["environments"] = {"test": upstream_url}
        settings |= {"error_format": "deployally", "key_format": "deployally",
                     "management": {"prefix": "/api/v1", "allow_jwt": True}, "policies": "policies/deployally.yaml",
                     "accounts": {"enabled": True, "min_password_length": 5}}
    else:
        settings["accounts"] = {"enabled": True}  # the dashboard's login, for the demo user made at start
    return settings


def _demo_lines(platform: str, base: str, values: dict[str, str]) -> list[str]:
    if platform == "deployally":
        ci, srv, adm, test = values["ci-cd"], values["server"], values["admin"], values["test"]
        login = '{"email": "usuario@exemplo.com", "password": "senha"}'
        return [
            f"  curl -s {base}/api/v1/templates",
            f"  curl -s {base}/api/v1/templates -H 'Authorization: Bearer {ci}'",
            f"  curl -si {base}/api/v1/instances -H 'Authorization: Bearer {srv}' -H 'X-Debug-Auth: true'",
            f"  curl -s {base}/api/v1/servers -H 'Authorization: Bearer {ci}'",
            f"  curl -s -X POST {base}/api/v1/deployments -H 'Authorization: Bearer {ci}'"
            " -H 'Content-Type: application/json' -d '{\"template_id\": \"tpl_01\"}'",
            f"  curl -s {base}/api/v1/templates -H 'Authorization: Bearer {test}'",
            f"  curl -s {base}/api/v1/auth/test -H 'Authorization: Bearer {adm}'",
            f"  curl -s -X POST {base}/api/v1/auth/login -H 'Content-Type: application/json' -d '{login}'",
        ]
    ro, dep, adm = values["read-only"], values["deployment"], values["admin"]
    return [
        f"  curl -s {base}/v1/servers",
        f"  curl -s {base}/v1/servers -H 'Authorization: Bearer {ro}'",
        f"  curl -si {base}/v1/servers -H 'Authorization: Bearer {ro}' -H 'X-Debug-Auth: true'",
        f"  curl -s -X POST {base}/v1/instances -H 'Authorization: Bearer {ro}'",
        f"  curl -s -X POST {base}/v1/instances -H 'Authorization: Bearer {dep}'"
        " -H 'Content-Type: application/json' -d '{\"app\": \"shop\"}'",
        f"  curl -s {base}/v1/invoices -H 'Authorization: Bearer {adm}'",
        f"  curl -s {base}/v1/auth/test -H 'Authorization: Bearer {adm}'",
    ]


async def _demo(port: int, data_dir: Path, platform: str = "deployerp") -> None:

    import uvicorn

    from gateway.app import create_app
    from gateway.demo import upstream
    from gateway.doors.assembly import build_components
    from gateway.serving.server import server_config

    sock = _listen("127.0.0.1", port)
    port = int(sock.getsockname()[1])  # --port 0 picks a free one
    try:
        runner, upstream_port = await upstream.start("127.0.0.1", 0, platform)
    except BaseException:
        sock.close()
        raise
    try:
        settings = load_settings(None, environ={}, overrides=_demo_settings(
            platform, port, f"http://127.0.0.1:{upstream_port}", data_dir))
        components = build_components(settings)
        demo = dict(upstream.DEMO_USER)
        if platform != "deployally":
            # The deployERP guide names no demo login: an admin with a password made now, printed once below.
            demo |= {"email": "admin@example.com", "password": secrets.token_urlsafe(12)}
        if components.accounts is not None:
            await components.accounts.create_user(demo["email"], demo["password"], demo["role"])
        base = f"http://127.0.0.1:{port}"
        keys = DEMO_KEYS[platform]
        title = "DeployAlly" if platform == "deployally" else "deployERP"
        lines = [
            "",
            f"gateway demo: sample {title} upstream on 127.0.0.1:{upstream_port}, gateway on {base}",
            f"store: {data_dir / 'keys.db'} (removed when the demo stops)",
        ]
        if platform == "deployally":
            lines.append("DeployAlly format: paths under /api/v1, da_ keys, answers in Portuguese; dashboard login "
                         "usuario@exemplo.com / senha (role admin) gives a JWT signed by the gateway")
            if settings.dashboard.enabled:
                lines.append(f"dashboard in a browser: {base}{settings.dashboard.path} (the same login)")
        elif settings.dashboard.enabled:
            lines.append(f"dashboard in a browser: {base}{settings.dashboard.path}, log in as {demo['email']} with "
                         f"the password {demo['password']} (made for this run, shown this once)")
        lines += ["", f"{('Three', 'Four')[len(keys) - 3]} keys, shown this once:"]
        values: dict[str, str] = {}
        from gateway.admin.models import key_models

        create = key_models(tuple(settings.rate_limits.tiers)).create
        for kind, name, perms, ips, env in keys:
            body = create.model_validate({"name": name, "permissions": perms, "allowed_ips": ips, "environment": env})
            value, record = await create_key(
                components.store, components.pepper, settings.key_format, **body.model_dump(exclude_unset=True),
                policy=components.policy, created_by="demo",
            )
            values[kind] = value
            allow = f", allowed from {', '.join(ips)}" if ips else ""
            lines.append(f"  {kind:<10} {record.id}  {value}  ({', '.join(perms)}{allow})")
        lines += ["", "Try:", *_demo_lines(platform, base, values), "", "Press Ctrl-C to stop.", ""]
        print("\n".join(lines), flush=True)
        app = create_app(settings, components)
        # The server `gateway serve` runs (client address from the socket, guarded protocol, limits), only
        # quieter, on the socket bound above.
        config = server_config(settings, app, log_level="warning", log_config=uvicorn.config.LOGGING_CONFIG)
        await uvicorn.Server(config).serve(sockets=[sock])
    finally:
        sock.close()
        await runner.cleanup()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_demo(args: argparse.Namespace) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="gateway-demo-"))  # mode 700 whatever the umask (mkdtemp's own)
    # SIGTERM (a closed terminal, `kill`, `docker stop`) must clean up like Ctrl-C: uvicorn re-raises the signal
    # after its graceful shutdown, and the default action would kill the process before the temporary store
    # (and its server secret) is removed.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        asyncio.run(_demo(args.port, data_dir, args.platform))
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(data_dir, ignore_errors=True)
    print("gateway demo stopped.")
    return 0


# --- keys -----------------------------------------------------------------------------------------------------


def _split_permissions(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _table(records: Sequence[KeyRecord]) -> str:
    now = utcnow()
    rows = [("ID", "NAME", "ENV", "STATUS", "PERMISSIONS", "EXPIRES", "HINT")]
    for r in records:
        rows.append((r.id, r.name, r.environment, r.status(now), ",".join(r.permissions),
                     to_iso(r.expires_at) or "-", "..." + r.hint))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _show(models: KeyModels, record: KeyRecord) -> str:
    doc = _public(models, record)
    width = max(len(k) for k in doc)
    return "\n".join(f"{k.ljust(width)}  {_plain(v)}" for k, v in doc.items())


def _plain(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(value) or "-"
    return str(value)


def _public(models: KeyModels, record: KeyRecord) -> dict[str, Any]:
    """The key as the API shows it (gateway.admin.models.ApiKey)."""
    return models.key.of(record, utcnow()).doc()


def _checked(model: type[M], doc: dict[str, Any]) -> M:
    """The options as the API would take the same JSON body: validated by the same model, so the CLI and the
    API accept and refuse the same values."""
    from pydantic import ValidationError

    from gateway.admin.models import problem

    try:
        return model.model_validate_json(json.dumps(doc))
    except ValidationError as exc:
        found = problem(exc, model)
        raise _invalid(found.field, found.where, found.text) from None


def _invalid(field: str, where: str, text: str) -> CLIError:
    # Name the flag the operator typed, and the field it feeds (the API's name for it).
    flag = _FLAGS.get(field)
    return CLIError(f"invalid {f'{flag} ({where})' if flag else where}: {text}", status=2)


def _out(args: argparse.Namespace, doc: Any, text: str) -> None:
    print(json.dumps(doc, indent=2) if args.json else text)


async def _keys(args: argparse.Namespace) -> int:
    settings = _settings(args)
    components = _components(settings)
    store = components.store
    cmd = args.keys_cmd
    from gateway.admin.models import KeyRotate, key_models

    # Answers name the allowlist ip_whitelist whatever the error format, as they always have.
    models = key_models(tuple(settings.rate_limits.tiers))
    try:
        if cmd == "create":
            options = {"name": args.name, "permissions": _split_permissions(args.permissions),
                       "ip_whitelist": args.allow_ip or [], "expires_at": args.expires_at, "environment": args.env,
                       "description": args.description, "rate_limit_tier": args.tier,
                       "auto_rotate": args.auto_rotate, "rotation_period": args.rotation_period,
                       "grace_period": args.grace_period, "notification_email": args.notification_email}
            body = _checked(models.create, {k: v for k, v in options.items() if v is not None})
            value, record = await create_key(store, components.pepper, settings.key_format,
                                             **body.model_dump(exclude_unset=True), policy=components.policy)
            _out(args, {**_public(models, record), "value": value},
                 f"Created {record.id} ({record.name}, {record.environment}).\n"
                 f"The key is shown this once; store it in a secret manager now:\n  {value}")
        elif cmd == "list":
            records = await store.list(environment=args.env, status=args.status)
            empty = "No keys yet: create one with 'gateway keys create --name NAME --permissions SCOPES'."
            _out(args, [_public(models, r) for r in records], _table(records) if records else empty)
        elif cmd == "show":
            found = await store.get(args.id)
            if found is None:
                raise CLIError(f"no key with id {args.id!r}")
            _out(args, _public(models, found), _show(models, found))
        elif cmd == "update":
            changes: dict[str, Any] = {}
            if args.name is not None:
                changes["name"] = args.name
            if args.permissions is not None:
                changes["permissions"] = _split_permissions(args.permissions)
            if args.clear_allow_ip:
                changes["ip_whitelist"] = []
            elif args.allow_ip:
                changes["ip_whitelist"] = args.allow_ip
            if args.tier is not None:
                changes["rate_limit_tier"] = None if args.tier == "none" else args.tier
            if args.expires_at is not None:
                changes["expires_at"] = None if args.expires_at in ("", "never") else args.expires_at
            if args.description is not None:
                changes["description"] = args.description
            if args.auto_rotate is not None:
                changes["auto_rotate"] = args.auto_rotate
            if args.rotation_period is not None:
                changes["rotation_period"] = args.rotation_period
            if args.grace_period is not None:
                changes["grace_period"] = None if args.grace_period == "default" else args.grace_period
            if args.notification_email is not None:
                changes["notification_email"] = args.notification_email or None
            if not changes:
                raise CLIError("nothing to change: give at least one option (see --help)", status=2)
            update = _checked(models.update, changes)
            updated = await update_key(store, args.id, update.model_dump(exclude_unset=True),
                                       policy=components.policy)
            if updated is None:
                raise CLIError(f"no key with id {args.id!r}")
            _out(args, _public(models, updated), f"Updated {updated.id}.\n{_show(models, updated)}")
        elif cmd == "revoke":
            revoked = await revoke_key(store, args.id)
            if revoked is None:
                raise CLIError(f"no key with id {args.id!r}")
            from gateway.keys.backends import is_postgres_url, is_redis_url

            url = settings.store.url
            bound = ("1 s (Redis store: every gateway is told at once)" if is_redis_url(url)
                     else "1 s (PostgreSQL store: every gateway is told at once)" if is_postgres_url(url)
                     else f"{settings.cache.ttl_seconds:g} s (cache.ttl_seconds)")
            _out(args, _public(models, revoked),
                 f"Revoked {revoked.id} ({revoked.name}). Running gateways refuse it within {bound}.")
        elif cmd == "rotate":
            current = await store.get(args.id)
            if current is None:
                raise CLIError(f"no key with id {args.id!r}")
            grace = (_checked(KeyRotate, {"grace_period": args.grace_period}).grace_period
                     if args.grace_period else grace_for(current, settings.rotation.grace_period))
            result = await rotate_key(store, components.pepper, settings.key_format, args.id, grace_period=grace)
            if result is None:
                raise CLIError(f"no key with id {args.id!r}")
            old, value, new = result
            doc = {"old_key": {"id": old.id, "expires_at": to_iso(old.expires_at)},
                   "new_key": {"id": new.id, "value": value, "created_at": to_iso(new.created_at)}}
            _out(args, doc, f"Rotated {old.id} -> {new.id}. The old key works until {to_iso(old.expires_at)}.\n"
                            f"The new key is shown this once:\n  {value}")
        elif cmd == "reveal":
            try:
                revealed = await reveal_value(store, components.pepper, args.id)
            except NothingHeld:
                raise CLIError(f"no value is held for {args.id}: it was revealed already, delivered to the rotation "
                               "webhook, or returned when the key was made") from None
            if revealed is None:
                raise CLIError(f"no key with id {args.id!r}")
            record, value = revealed
            _out(args, {"id": record.id, "value": value, "created_at": to_iso(record.created_at)},
                 f"The value of {record.id} ({record.name}), shown this once and erased from the store:\n  {value}")
        elif cmd == "rotate-due":
            return await _rotate_due(args, settings, components)
        return 0
    except KeyInputError as exc:
        raise _invalid(exc.field, exc.field, exc.problem) from None
    except Conflict as exc:
        raise CLIError(f"cannot do that: {exc}") from None
    except SealError as exc:
        raise CLIError(f"cannot reveal it: {exc}; it is erased") from None
    finally:
        await store.close()


# The CLI flag behind each field a KeyInputError can name.
_FLAGS = {
    "name": "--name", "permissions": "--permissions", "ip_whitelist": "--allow-ip", "expires_at": "--expires-at",
    "environment": "--env", "description": "--description", "rate_limit_tier": "--tier",
    "rotation_period": "--rotation-period", "grace_period": "--grace-period",
    "notification_email": "--notification-email",
}


async def _rotate_due(args: argparse.Namespace, settings: Settings, components: Components) -> int:
    """One pass of the automatic rotation (gateway/rotation/runner.py), as `gateway serve` makes them: for cron,
    or with `rotation.automatic: false`."""
    from gateway.rotation.runner import RotationRunner

    runner = RotationRunner(settings, components.store, components.pepper, actor="cli")
    if args.dry_run:
        due = await runner.due()
        results = [{"key_id": r.id, "name": r.name, "rotation_due_at": to_iso(r.rotation_due_at), "rotated": False}
                   for r in due]
    else:
        # A gateway's pass in progress is waited for (then this one finds its keys rotated).
        outcomes = await runner.run_leased(wait=30.0)
        if outcomes is None:
            raise CLIError("another gateway process has been rotating keys for 30 s (the rotation lease is "
                           "taken); try again later")
        results = [o.doc() for o in outcomes]
        if outcomes and settings.rotation.webhook_url is None:
            print("gateway: rotation.webhook_url is not set: the new values are held until revealed once "
                  "(gateway keys reveal ID)", file=sys.stderr)
    failures = sum(1 for r in results if r.get("error"))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        verb = "would rotate" if args.dry_run else "rotated"
        print(f"{len(results)} key(s) due for rotation; {verb}:" if results else "No key is due for rotation.")
        for r in results:
            line = f"  {r['key_id']}"
            if r.get("new_key_id"):
                line += f" -> {r['new_key_id']} (old key works until {r['old_key_expires_at']})"
                if r.get("delivery") == "held":
                    line += f"; reveal the new key once: gateway keys reveal {r['new_key_id']}"
            if r.get("error"):
                line += f"  [{r['error']}]"
            print(line)
    return 1 if failures else 0


async def _audit(args: argparse.Namespace) -> int:
    settings = _settings(args)
    components = _components(settings)
    try:
        events = await components.store.audit_log(args.key)
    finally:
        await components.store.close()
    if args.json:
        print(json.dumps([e.public() for e in events], indent=2))
    elif not events:
        print("No audit events.")
    else:
        for e in events:
            details = json.dumps(e.details, separators=(",", ":")) if e.details else ""
            print(f"{to_iso(e.at)}  {e.actor:<18} {e.action:<7} {e.key_id}  {details}".rstrip())
    return 0


# --- store ---------------------------------------------------------------------------------------------------


def cmd_store(args: argparse.Namespace) -> int:
    from gateway import cli_store

    if args.store_cmd == "copy" and args.source == args.target:
        raise CLIError("--from and --to name the same store", status=2)
    settings = _settings(args)
    doc, text = asyncio.run(cli_store.migrate(args, settings) if args.store_cmd == "migrate"
                            else cli_store.copy(args, settings))
    _out(args, doc, text)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    return asyncio.run(_audit(args))


def cmd_keys(args: argparse.Namespace) -> int:
    return asyncio.run(_keys(args))


# --- users ----------------------------------------------------------------------------------------------------


def cmd_users(args: argparse.Namespace) -> int:
    from gateway.cli_users import main as users_main

    return users_main(args, _settings(args))


# --- policy ---------------------------------------------------------------------------------------------------


def cmd_policy(args: argparse.Namespace) -> int:
    policy = load_policy(args.file)
    print(f"{policy.source}: OK, {len(policy.routes)} rules, {len(policy.known_scopes)} scopes")
    for line in policy.describe():
        print("  " + line)
    return 0


# --- parser ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="API-key authentication gateway.")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", metavar="PATH", help=f"configuration file (default: {DEFAULT_CONFIG} if present)")
        return p

    serve = with_config(sub.add_parser("serve", help="run the gateway"))
    serve.add_argument("--host", help="listen address (overrides listen.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides listen.port)")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="worker processes (overrides listen.workers; more than 1 wants a Redis store)")
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="run a sample upstream and the gateway in front of it, with its keys")
    demo.add_argument("--port", type=int, default=8080, help="gateway port (default 8080; 0 picks a free one)")
    demo.add_argument("--platform", choices=("deployerp", "deployally"), default="deployerp",
                      help="deployerp (default), or deployally: the DeployAlly format, da_ keys, paths under /api/v1, "
                           "answers in Portuguese, a dashboard login issuing JWTs")
    demo.set_defaults(func=cmd_demo)

    keys = sub.add_parser("keys", help="manage API keys (directly on the store)")
    ksub = keys.add_subparsers(dest="keys_cmd", required=True, metavar="ACTION")

    def action(name: str, help: str) -> argparse.ArgumentParser:
        p = with_config(ksub.add_parser(name, help=help))
        p.add_argument("--json", action="store_true", help="print JSON")
        return p

    create = action("create", "create a key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument("--permissions", required=True, help="comma-separated scopes: servers:read,instances:*")
    create.add_argument("--allow-ip", action="append", metavar="CIDR", help="allowed network (repeatable)")
    create.add_argument("--expires-at", metavar="ISO8601")
    create.add_argument("--env", choices=("live", "test"), default="live")
    create.add_argument("--description")
    create.add_argument("--tier", help="rate-limit tier: standard, high_volume, limited, unlimited")
    create.add_argument("--auto-rotate", action="store_true",
                        help="rotate it automatically once --rotation-period has passed")
    create.add_argument("--rotation-period", metavar="PERIOD", help="e.g. 90d (needed with --auto-rotate)")
    create.add_argument("--grace-period", metavar="PERIOD",
                        help="how long the old key works after a rotation (default: rotation.grace_period)")
    create.add_argument("--notification-email", metavar="ADDRESS",
                        help="where notices go: before the key expires or rotates, and once it has rotated")
    lst = action("list", "list keys (never their values)")
    lst.add_argument("--env", choices=("live", "test"))
    lst.add_argument("--status", choices=("active", "expired", "revoked"))
    show = action("show", "show one key")
    show.add_argument("id")
    update = action("update", "change a key's name, permissions, allowlist, tier, expiry or description")
    update.add_argument("id")
    update.add_argument("--name")
    update.add_argument("--permissions", help="comma-separated scopes (replaces the list)")
    update.add_argument("--allow-ip", action="append", metavar="CIDR", help="replaces the allowlist (repeatable)")
    update.add_argument("--clear-allow-ip", action="store_true", help="remove the allowlist")
    update.add_argument("--tier", help="rate-limit tier, or 'none'")
    update.add_argument("--expires-at", metavar="ISO8601", help="new expiry, or 'never'")
    update.add_argument("--description")
    update.add_argument("--auto-rotate", action=argparse.BooleanOptionalAction, default=None)
    update.add_argument("--rotation-period", metavar="PERIOD")
    update.add_argument("--grace-period", metavar="PERIOD", help="e.g. 7d, or 'default' for rotation.grace_period")
    update.add_argument("--notification-email", metavar="ADDRESS", help="an address, or '' for no notices")
    revoke = action("revoke", "revoke a key (the record stays, for the audit trail)")
    revoke.add_argument("id")
    rotate = action("rotate", "replace a key; the old one works for a grace period")
    rotate.add_argument("id")
    rotate.add_argument("--grace-period", metavar="PERIOD", help="e.g. 7d, 12h, 0 (default: rotation.grace_period)")
    reveal = action("reveal", "show, once, the value an automatic rotation held for a key (then it is erased)")
    reveal.add_argument("id")
    due = action("rotate-due", "rotate every auto-rotate key past its period and send the notices due (what "
                 "'gateway serve' does every rotation.check_seconds)")
    due.add_argument("--dry-run", action="store_true", help="only list what would be rotated")
    keys.set_defaults(func=cmd_keys)

    store = sub.add_parser("store", help="key stores")
    ssub = store.add_subparsers(dest="store_cmd", required=True, metavar="ACTION")
    copy = with_config(ssub.add_parser("copy", help="copy every key (hashes only) and the audit trail"))
    where = ("sqlite:///path, redis://host:port/db, redis+sentinel://..., redis+cluster://... (docs/redis.md) or "
             "postgresql://user:password@host:5432/db (docs/stores.md)")
    copy.add_argument("--from", dest="source", required=True, metavar="URL", help=where)
    copy.add_argument("--to", dest="target", required=True, metavar="URL", help=where)
    copy.add_argument("--json", action="store_true")
    migrate = with_config(ssub.add_parser(
        "migrate", help="bring a PostgreSQL store's schema up to this gateway's (run once before the first start "
                        "and after each upgrade; the other stores need no such step)"))
    migrate.add_argument("--url", metavar="URL", help="the store to migrate (default: store.url)")
    migrate.add_argument("--json", action="store_true")
    store.set_defaults(func=cmd_store)

    audit = with_config(sub.add_parser("audit", help="list the audit trail of key changes"))
    audit.add_argument("--key", metavar="ID", help="only this key's events")
    audit.add_argument("--json", action="store_true")
    audit.set_defaults(func=cmd_audit)

    from gateway.cli_users import add_parser as add_users

    add_users(sub, with_config)
    sub.choices["users"].set_defaults(func=cmd_users)

    policy = sub.add_parser("policy", help="policy files")
    psub = policy.add_subparsers(dest="policy_cmd", required=True, metavar="ACTION")
    check = psub.add_parser("check", help="validate a policy file and print its routes")
    check.add_argument("file")
    policy.set_defaults(func=cmd_policy)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, PolicyError) as exc:
        for problem in str(exc).splitlines() or [""]:  # a ConfigError names every problem, one line each
            print(f"gateway: configuration error: {problem}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"gateway: store error: {exc}", file=sys.stderr)
        return 1
    except CLIError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`gateway keys list | head`): not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
