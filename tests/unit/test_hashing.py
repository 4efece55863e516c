"""gateway/keys/hashing.py: the keyed hash the store keeps, and the server secret (pepper) behind it."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config.settings import ConfigError, Settings, StoreSettings, load_settings
from gateway.keys.format import generate_key
from gateway.keys.hashing import SECRET_FILE_NAME, Pepper, default_secret_file, load_pepper

SECRET = "s3cr3t-pepper-value-0123456789abcdef"


def settings_in(tmp_path: Path, **fields: object) -> Settings:
    """Settings as if loaded from a config file in ``tmp_path`` (relative paths resolve there)."""
    base = Settings(store=StoreSettings(url="sqlite:///data/keys.db"))
    return base.model_copy(update={"base_dir": str(tmp_path), **fields})


@pytest.fixture
def umask_zero() -> Iterator[None]:
    # The secret must be 600 even when the operator's umask would allow more.
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_hash_is_hmac_sha256_of_the_value_keyed_with_the_pepper() -> None:
    pepper = Pepper(SECRET.encode(), "test")
    value = generate_key("dep_live_")
    expected = hmac.new(SECRET.encode(), value.encode(), hashlib.sha256).hexdigest()
    assert pepper.hash(value) == expected
    assert len(pepper.hash(value)) == 64
    assert pepper.hash(value) != hashlib.sha256(value.encode()).hexdigest()  # keyed, not a plain digest
    assert Pepper(b"another-pepper-of-some-length", "x").hash(value) != expected
    assert pepper.hash(value) != pepper.hash(generate_key("dep_live_"))
    assert Pepper.same(expected, pepper.hash(value))
    assert not Pepper.same(expected, "0" * 64)


@pytest.mark.parametrize("length", [0, 1, 32, 63, 64, 65, 200])
def test_hash_equals_hmac_new_for_every_key_length(length: int) -> None:
    # The pepper builds HMAC from its definition (both pads hashed once): keys shorter than, equal to and
    # longer than SHA-256's 64-byte block (hashed first) must give exactly what the hmac module gives.
    key = os.urandom(length)
    pepper = Pepper(key, "test")
    for value in ("", generate_key("dep_live_"), "é" * 100):
        assert pepper.hash(value) == hmac.new(key, value.encode(), hashlib.sha256).hexdigest()
    assert pepper.hash("same") == pepper.hash("same")  # the precomputed states are copied, never spent


def test_repr_and_str_never_show_the_pepper() -> None:
    pepper = Pepper(SECRET.encode(), "secret setting")
    for text in (repr(pepper), str(pepper), f"{pepper}", f"{pepper!r}", repr([pepper]), repr({"p": pepper})):
        assert SECRET not in text
        assert SECRET.encode().hex() not in text
        assert "redacted" in text
    assert not hasattr(pepper, "__dict__")  # nothing for vars() or a generic dumper to reveal


def test_settings_repr_never_shows_the_secret() -> None:
    s = load_settings(None, environ={"GATEWAY_SECRET": SECRET})
    assert s.secret == SECRET
    assert SECRET not in repr(s) and SECRET not in str(s)


def test_the_secret_setting_wins_and_nothing_is_written(tmp_path: Path) -> None:
    s = settings_in(tmp_path, secret=SECRET)
    pepper, created = load_pepper(s)
    assert not created
    assert pepper.source == "secret setting"
    assert pepper.hash("x") == Pepper(SECRET.encode(), "").hash("x")
    assert not (tmp_path / "data").exists()


def test_secret_file_is_created_with_mode_600_beside_the_store_and_reused(tmp_path: Path, umask_zero: None) -> None:
    s = settings_in(tmp_path)
    path = tmp_path / "data" / SECRET_FILE_NAME
    assert default_secret_file(s) == path
    first, created = load_pepper(s)
    assert created
    assert first.source == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes().strip()) >= 32
    again, created_again = load_pepper(s)
    assert not created_again
    assert again.hash("dep_live_x") == first.hash("dep_live_x")
    assert path.read_bytes().decode() not in repr(first)


def test_secret_file_setting_is_resolved_against_the_config_directory(tmp_path: Path) -> None:
    config = tmp_path / "conf" / "gateway.yaml"
    config.parent.mkdir()
    config.write_text("secret_file: secrets/pepper\nstore: {url: 'sqlite:///keys.db'}\n")
    s = load_settings(config, environ={})
    assert default_secret_file(s) == tmp_path / "conf" / "secrets" / "pepper"
    pepper, created = load_pepper(s)
    assert created and (tmp_path / "conf" / "secrets" / "pepper").exists()
    assert not (tmp_path / "conf" / SECRET_FILE_NAME).exists()
    # An existing file given by the operator is read, not replaced.
    given = tmp_path / "given.secret"
    given.write_text("x" * 40 + "\n")
    given.chmod(0o600)
    p2, created2 = load_pepper(s.model_copy(update={"secret_file": str(given)}))
    assert not created2 and p2.hash("v") == Pepper(b"x" * 40, "").hash("v")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o666, 0o660])
def test_a_secret_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "pepper"
    path.write_text(SECRET)
    path.chmod(mode)
    with pytest.raises(ConfigError) as info:
        load_pepper(settings_in(tmp_path, secret_file="pepper"))
    message = str(info.value)
    assert message.startswith("secret_file: ")
    assert str(path) in message and "chmod 600" in message and f"{mode:o}" in message
    assert SECRET not in message


@pytest.mark.parametrize("content", [b"", b"\n", b"short", b"fifteen-bytes!!", b"   padded    \n"])
def test_a_too_short_secret_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "pepper"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=r"^secret_file: .*fewer than 16 bytes") as info:
        load_pepper(settings_in(tmp_path, secret_file="pepper"))
    if content.strip():
        assert content.strip().decode() not in str(info.value).replace(str(path), "")


def test_a_too_short_secret_setting_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^secret: must be at least 16 characters") as info:
        load_settings(None, environ={"GATEWAY_SECRET": "tooshort"})
    assert "tooshort" not in str(info.value)
    with pytest.raises(ConfigError, match=r"^secret: "):
        load_settings(None, environ={"GATEWAY_SECRET": ""})


def test_load_pepper_checks_the_secret_length_itself(tmp_path: Path) -> None:
    # Settings built in code skip the loader's validation: the pepper must still not be weak.
    with pytest.raises(ConfigError, match=r"^secret: must be at least 16") as info:
        load_pepper(settings_in(tmp_path, secret="tooshort"))
    assert "tooshort" not in str(info.value)


def test_missing_secret_file_without_create(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^secret_file: .* does not exist"):
        load_pepper(settings_in(tmp_path), create=False)


def test_unreadable_or_uncreatable_secret_files_give_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "a-directory").mkdir()
    with pytest.raises(ConfigError, match=r"^secret_file: cannot read"):
        load_pepper(settings_in(tmp_path, secret_file="a-directory"))
    # The folder for the secret cannot be made (a file is in the way): a message, not a traceback.
    (tmp_path / "not-a-dir").write_text("x")
    with pytest.raises(ConfigError, match=r"^secret_file: cannot create"):
        load_pepper(settings_in(tmp_path, secret_file="not-a-dir/sub/pepper"))
    with pytest.raises(ConfigError, match=r"^secret_file: cannot create"):
        load_pepper(settings_in(tmp_path, secret_file="not-a-dir/pepper"))
