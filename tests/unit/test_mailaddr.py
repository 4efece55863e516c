"""Notification addresses (gateway/mailaddr.py): RFC 5321 section 4.1.2 mailboxes in their plain dot-atom form,
within section 4.5.3.1's lengths; masked for logs; mail-server URLs without their credentials."""

from __future__ import annotations

import pytest

from gateway.mailaddr import check_address, masked, redacted_url


@pytest.mark.parametrize("text, expected", [
    ("ops@example.com", "ops@example.com"),
    (" admin@deployerp.com ", "admin@deployerp.com"),  # the guide's body has a space after the address
    ("First.Last+tag@Mail.Example.COM", "First.Last+tag@mail.example.com"),  # the domain is case-blind
    ("o'brien@example.co.uk", "o'brien@example.co.uk"),
    ("a@b-c.example.", "a@b-c.example"),
])
def test_accepted(text: str, expected: str) -> None:
    assert check_address(text) == expected


@pytest.mark.parametrize("text", [
    "", "ops", "@example.com", "ops@", "ops@localhost", "ops@@example.com", "a b@example.com", "ops@exa mple.com",
    "ops@example.com\r\nBcc: x@example.com", "\"quoted\"@example.com", "ops@[127.0.0.1]", "ops@1.2.3.4",
    ".ops@example.com", "ops.@example.com", "o..ps@example.com", "ops@-example.com", "ops@example_1.com",
    "x" * 65 + "@example.com", "ops@" + "a" * 250 + ".com", "ops@example.com,evil@example.com", "é@example.com",
])
def test_refused_without_repeating_the_value(text: str) -> None:
    with pytest.raises(ValueError) as exc:
        check_address(text)
    assert "e-mail address" in str(exc.value)
    if len(text) > 3 and text not in "like ops@example.com":
        assert text.strip() not in str(exc.value)


def test_masked_and_redacted() -> None:
    assert masked("ops.team@example.com") == "***@example.com"
    assert masked("nonsense") == "***"
    assert redacted_url("smtp://gw:p%40ss@mail.example.com:587") == "smtp://***@mail.example.com:587"
    assert redacted_url("smtps://gw:p@ss@mail.example.com") == "smtps://***@mail.example.com"
    assert redacted_url("smtp://mail.example.com:25") == "smtp://mail.example.com:25"
