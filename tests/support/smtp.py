"""A real SMTP server for the tests: aiosmtpd on a free loopback port, in a thread of the test process.

It keeps every message it accepts (:attr:`MailServer.messages`). It can require AUTH (a user and password of
the test's) and offer STARTTLS with a certificate the test made; it can be stopped and started again on the
same port (a mail server that goes away and comes back). Nothing is mocked: the gateway talks SMTP to it over
a real socket.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import ssl
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.procs import free_port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    tls: bool
    authenticated: bool

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def text(self) -> str:
        """Every byte received (headers and body), decoded: what a search for a key value must not find."""
        body = self.message.get_body(("plain",))
        return self.raw.decode("utf-8", "replace") + "\n" + (body.get_content() if body is not None else "")


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's API
        with self.lock:
            self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content),
                                          session.ssl is not None, bool(session.authenticated)))
        return "250 Message accepted for delivery"


class MailServer:
    """aiosmtpd on ``127.0.0.1:<port>``. ``user``/``password``: AUTH required (over TLS when ``tls``).
    ``tls``: STARTTLS offered and required, with a self-signed certificate written to ``work/ca.pem``."""

    def __init__(self, work: Path | None = None, port: int | None = None, user: str | None = None,
                 password: str | None = None, tls: bool = False, start: bool = True) -> None:
        self.port = port or free_port()
        self.inbox = _Inbox()
        self.user, self.password = user, password
        self.tls_context: ssl.SSLContext | None = None
        self.ca_file: Path | None = None
        if tls:
            assert work is not None
            self.ca_file, self.tls_context = _self_signed(work)
        self.controller: Controller | None = None
        if start:
            self.start()

    @property
    def url(self) -> str:
        auth = f"{self.user}:{self.password}@" if self.user else ""
        return f"smtp://{auth}127.0.0.1:{self.port}"

    @property
    def messages(self) -> list[Received]:
        with self.inbox.lock:
            return list(self.inbox.messages)

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login.decode() == self.user
              and auth_data.password.decode() == self.password)
        return AuthResult(success=ok)

    def start(self) -> None:
        kwargs: dict[str, Any] = {}
        if self.user:
            kwargs.update(authenticator=self._authenticate, auth_required=True,
                          auth_require_tls=self.tls_context is not None)
        if self.tls_context is not None:
            kwargs.update(tls_context=self.tls_context, require_starttls=True)
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port, ready_timeout=10, **kwargs)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def wait(self, count: int, timeout: float = 20.0) -> list[Received]:
        """The messages once there are at least ``count`` of them (bounded in time)."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.messages)} message(s) received in {timeout} s, wanted {count}")
            time.sleep(0.05)
        return self.messages


def _self_signed(work: Path) -> tuple[Path, ssl.SSLContext]:
    """A key and self-signed certificate for 127.0.0.1 (the client trusts it as its CA file)."""
    work.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = work / "ca.pem", work / "smtp-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return cert_file, context
