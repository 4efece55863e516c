"""The notices' SMTP client (gateway/rotation/mail.py, aiosmtplib) against a real SMTP server (aiosmtpd on a
loopback port, tests/support/smtp.py): plain, STARTTLS when the server offers it (RFC 3207), AUTH (RFC 4954),
and a password that never shows in a message, a repr or an error."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from pathlib import Path

import pytest

from gateway.config.settings import ConfigError, load_settings
from gateway.rotation.mail import Mailer, MailError, SMTPServer, mailer_for
from tests.support.procs import free_port
from tests.support.smtp import MailServer

PASSWORD = "s3cret/pass@word"  # with characters a URL must percent-encode
ENCODED = "s3cret%2Fpass%40word"


def message(to: str = "ops@example.com") -> EmailMessage:
    msg = EmailMessage()
    msg["To"] = to
    msg["Subject"] = "test notice"
    msg.set_content("hello\n")
    return msg


def mailer(url: str, ca_file: Path | None = None) -> Mailer:
    env = {"GATEWAY_NOTIFICATIONS__SMTP__URL": url, "GATEWAY_NOTIFICATIONS__SMTP__FROM": "gateway@example.com",
           "GATEWAY_NOTIFICATIONS__SMTP__TIMEOUT_SECONDS": "5"}
    if ca_file is not None:
        env["GATEWAY_NOTIFICATIONS__SMTP__CA_FILE"] = str(ca_file)
    m = mailer_for(load_settings(None, environ=env))
    assert m is not None
    return m


def test_plain_smtp_delivers_with_the_configured_sender() -> None:
    server = MailServer()
    try:
        asyncio.run(mailer(server.url).send(message()))
        (got,) = server.wait(1)
    finally:
        server.stop()
    assert got.mail_from == "gateway@example.com" and got.rcpt_tos == ["ops@example.com"]
    assert got.message["From"] == "gateway@example.com" and not got.tls


def test_starttls_is_used_when_offered_and_auth_goes_over_it(tmp_path: Path) -> None:
    """RFC 3207: on smtp:// the client upgrades when the server lists STARTTLS (this one requires it, and AUTH
    only over TLS, RFC 4954 section 4); the server's certificate is checked against ``ca_file``."""
    server = MailServer(tmp_path, user="gw", password=PASSWORD, tls=True)
    url = f"smtp://gw:{ENCODED}@127.0.0.1:{server.port}"
    try:
        asyncio.run(mailer(url, server.ca_file).send(message()))
        (got,) = server.wait(1)
        # Without the CA the certificate is refused: no silent fallback to plain text.
        with pytest.raises(MailError) as refused:
            asyncio.run(mailer(url).send(message()))
    finally:
        server.stop()
    assert got.tls and got.authenticated
    assert PASSWORD not in str(refused.value) and ENCODED not in str(refused.value)


def test_a_wrong_password_or_a_server_away_is_a_mail_error_without_the_password(tmp_path: Path) -> None:
    server = MailServer(tmp_path, user="gw", password="right-password", tls=True)
    wrong = f"smtp://gw:{ENCODED}@127.0.0.1:{server.port}"
    try:
        m = mailer(wrong, server.ca_file)
        with pytest.raises(MailError) as denied:
            asyncio.run(m.send(message()))
    finally:
        server.stop()
    assert server.messages == []
    away = mailer(f"smtp://gw:{ENCODED}@127.0.0.1:{free_port()}")
    with pytest.raises(MailError) as unreachable:
        asyncio.run(away.send(message()))
    for text in (str(denied.value), str(unreachable.value), repr(m), str(m.server), repr(m.server)):
        assert PASSWORD not in text and ENCODED not in text and "s3cret" not in text, text
    assert "127.0.0.1" in str(unreachable.value)


def test_smtp_settings_are_checked_without_showing_the_password() -> None:
    bad = {
        "http://gw:topsecret1@127.0.0.1:25": "smtp://host:port",
        "smtp://gw:topsecret1@127.0.0.1:0": "port",
        "smtp://gw:topsecret1@127.0.0.1:25/path": "no path",
    }
    for url, why in bad.items():
        with pytest.raises(ConfigError) as exc:
            load_settings(None, environ={"GATEWAY_NOTIFICATIONS__SMTP__URL": url,
                                         "GATEWAY_NOTIFICATIONS__SMTP__FROM": "gateway@example.com"})
        assert why in str(exc.value) and "topsecret1" not in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_settings(None, environ={"GATEWAY_NOTIFICATIONS__SMTP__URL": "smtp://gw:topsecret1@127.0.0.1:25"})
    assert "notifications.smtp.from" in str(exc.value) and "topsecret1" not in str(exc.value)
    settings = load_settings(None, environ={"GATEWAY_NOTIFICATIONS__SMTP__URL": "smtps://gw:topsecret1@mail.test",
                                            "GATEWAY_NOTIFICATIONS__SMTP__FROM": "gateway@example.com"})
    assert "topsecret1" not in repr(settings)
    server = SMTPServer.from_url(str(settings.notifications.smtp.url))
    assert (server.port, server.implicit_tls, server.password) == (465, True, "topsecret1")
    assert "topsecret1" not in repr(server)
