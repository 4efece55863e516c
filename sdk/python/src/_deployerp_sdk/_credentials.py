"""Where a client's API key comes from: the argument, the platform's variable, then (DeployAlly) its config file.

A missing key is not an error here: the client is built anyway and its first call raises
:class:`AuthenticationError` (the deployERP guide's snippet builds the client outside its ``try``). What this
module refuses at once is a config file that exists but cannot be used: unreadable, malformed, or readable by
anyone but its owner. That last check is the one ssh makes of a private key: the key in the file is a secret, so
a file that group or others can read is not used, and the error says how to fix it (``chmod 600``).
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

from _deployerp_sdk._errors import ConfigurationError

__all__ = ["Credential", "config_path", "resolve"]


@dataclass(frozen=True, slots=True, repr=False)
class Credential:
    """The key a client sends (``None``: none found; ``looked`` says where the search went, for the error)."""

    api_key: str | None
    looked: str

    def __repr__(self) -> str:
        return f"Credential(api_key={'[redacted]' if self.api_key else None})"


def config_path(app: str) -> Path:
    """``$XDG_CONFIG_HOME/<app>/config.toml``; XDG Base Directory: unset, empty or relative means ``~/.config``."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / app / "config.toml"


def resolve(api_key: str | None, variable: str, config_app: str | None) -> Credential:
    """The key from the argument, else ``variable``, else (with ``config_app``) its config file's ``api_key``.

    Blank values count as none. Raises :class:`ConfigurationError` for a config file that cannot be used.
    """
    if api_key is not None:
        return Credential(api_key.strip() or None, "the api_key argument is blank")
    value = os.environ.get(variable, "").strip()
    if value:
        return Credential(value, variable)
    if config_app is None:
        return Credential(None, f"pass Client(api_key=...) or set {variable}")
    path = config_path(config_app)
    looked = f"pass Client(api_key=...), set {variable} or write api_key = \"...\" in {path} (chmod 600)"
    return Credential(_read_key(path), looked)


def _read_key(path: Path) -> str | None:
    """``api_key`` from a TOML file only its owner can read; None when there is no file or no key in it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from None
    # fstat the descriptor that is read, so the file checked is the file used (no swap in between).
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigurationError(f"{path} is not a regular file")
        if os.name == "posix":
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o077:
                raise ConfigurationError(
                    f"Permissions {mode:04o} for {path} are too open: the API key in it must not be readable by "
                    f"group or others, so it is not used. Run: chmod 600 {path}"
                )
            if st.st_uid != os.geteuid():
                raise ConfigurationError(f"{path} belongs to another user: it is not used (own it, then chmod 600)")
        raw = f.read()
    try:
        # TOMLDecodeError names a line and column, never the text: safe to show whole.
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigurationError(f"{path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path} is not valid TOML: {exc}") from None
    key = doc.get("api_key")
    if key is None:
        return None
    if not isinstance(key, str):
        raise ConfigurationError(f'{path}: api_key must be a string (api_key = "da_...")')
    return key.strip() or None
