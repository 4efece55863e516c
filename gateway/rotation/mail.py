"""E-mail through SMTP (aiosmtplib): ``notifications.smtp.url`` is ``smtp://`` (STARTTLS whenever the server
offers it, RFC 3207) or ``smtps://`` (TLS from the first byte, RFC 8314 section 3.3), with an optional
``user:password@`` for AUTH (RFC 4954).

The password lives in :class:`SMTPServer` only, whose repr leaves it out, and no :class:`MailError` message
contains it: what aiosmtplib reports is reduced to its class and the server's reply, with the password scrubbed
from the text should a server ever echo it.
"""

from __future__ import annotations

import dataclasses
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

import aiosmtplib

from gateway.config.settings import ConfigError, Settings, resolve_path

_PORTS = {"smtp": 25, "smtps": 465}


class MailError(Exception):
    """A message was not accepted by the server (or it could not be reached). Never names the password."""


@dataclass(frozen=True, slots=True)
class SMTPServer:
    host: str
    port: int
    implicit_tls: bool
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    timeout: float = 10.0
    ca_file: str | None = None

    @classmethod
    def from_url(cls, url: str, timeout: float = 10.0, ca_file: str | None = None) -> SMTPServer:
        """The server of a URL the settings accepted (gateway.config.settings checks its form)."""
        parts = urlsplit(url)
        return cls(host=parts.hostname or "localhost", port=parts.port or _PORTS[parts.scheme],
                   implicit_tls=parts.scheme == "smtps",
                   username=unquote(parts.username) if parts.username else None,
                   password=unquote(parts.password) if parts.password is not None else None,
                   timeout=timeout, ca_file=ca_file)

    def __str__(self) -> str:
        """The server without its credentials (what messages and logs name)."""
        return f"{'smtps' if self.implicit_tls else 'smtp'}://{self.host}:{self.port}"


class Mailer:
    """Sends one message at a time to :attr:`server`, from :attr:`sender`."""

    def __init__(self, server: SMTPServer, sender: str) -> None:
        self.server = server
        self.sender = sender
        self._tls = ssl.create_default_context(cafile=server.ca_file)

    def __repr__(self) -> str:
        return f"Mailer({self.server})"

    async def send(self, message: EmailMessage) -> None:
        """Deliver ``message`` (its ``From`` is set here). Raises :class:`MailError`."""
        if "From" not in message:
            message["From"] = self.sender
        s = self.server
        try:
            await aiosmtplib.send(
                message, hostname=s.host, port=s.port, username=s.username, password=s.password,
                use_tls=s.implicit_tls, start_tls=False if s.implicit_tls else None, timeout=s.timeout,
                tls_context=self._tls,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            text = f"{exc.__class__.__name__}: {exc}"
            if s.password:
                text = text.replace(s.password, "***")
            raise MailError(f"{s}: {text}") from None


def mailer_for(settings: Settings) -> Mailer | None:
    """The mailer of ``notifications.smtp``, or None when no server is configured (a relative ``ca_file`` is
    read from the configuration file's directory)."""
    smtp = settings.notifications.smtp
    if smtp.url is None or smtp.sender is None:
        return None
    ca = str(resolve_path(settings, smtp.ca_file)) if smtp.ca_file else None
    try:
        return Mailer(SMTPServer.from_url(smtp.url, smtp.timeout_seconds, ca), smtp.sender)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"notifications.smtp.ca_file: cannot read {ca}: {exc.__class__.__name__}") from None
