"""gateway/keys/format.py: key values look like the seeds' keys, and the checksum refuses mistyped keys before
any store lookup."""

from __future__ import annotations

import re
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.settings import KEY_FORMATS, KeyFormat
from gateway.keys.format import (
    ALPHABET,
    BODY_LENGTH,
    CHECKSUM_LENGTH,
    RANDOM_LENGTH,
    KeyParser,
    checksum,
    generate_key,
    generate_key_id,
    is_key_id,
)

ERP = KeyFormat(**KEY_FORMATS["deployerp"])
ALLY = KeyFormat(**KEY_FORMATS["deployally"])
SHAPES = {
    "dep_live_": re.compile(r"^dep_live_[0-9A-Za-z]{32}$"),
    "dep_test_": re.compile(r"^dep_test_[0-9A-Za-z]{32}$"),
    "da_": re.compile(r"^da_[0-9A-Za-z]{32}$"),
    "da_test_": re.compile(r"^da_test_[0-9A-Za-z]{32}$"),
}


def _from_base62(text: str) -> int:
    n = 0
    for ch in text:
        n = n * 62 + ALPHABET.index(ch)
    return n


def test_defaults_are_the_seed_prefixes() -> None:
    assert KeyFormat() == ERP == KeyFormat(live="dep_live_", test="dep_test_")
    assert (ALLY.live, ALLY.test) == ("da_", "da_test_")
    assert ERP.prefix("live") == "dep_live_" and ERP.prefix("test") == "dep_test_"


@pytest.mark.parametrize(("fmt", "env"), [(ERP, "live"), (ERP, "test"), (ALLY, "live"), (ALLY, "test")])
def test_generated_keys_have_the_seed_shape_and_parse_back(fmt: KeyFormat, env: str) -> None:
    prefix = fmt.prefix(env)
    parser = KeyParser(fmt)
    values = {generate_key(prefix) for _ in range(200)}
    assert len(values) == 200  # random, never repeated
    for value in values:
        assert SHAPES[prefix].match(value), value
        assert parser.environment(value) == env
    # The seed example's shape (dep_live_ + 32 characters) is what a generated key has.
    assert len("a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6") == BODY_LENGTH == RANDOM_LENGTH + CHECKSUM_LENGTH


def test_random_part_uses_the_whole_alphabet() -> None:
    seen = set("".join(generate_key("dep_live_")[9:9 + RANDOM_LENGTH] for _ in range(300)))
    assert seen == set(ALPHABET)  # 7800 draws from 62 symbols: a missing one means a biased generator


def test_checksum_is_the_base62_crc32_of_prefix_and_random_part() -> None:
    value = generate_key("dep_live_")
    head, tail = value[:-CHECKSUM_LENGTH], value[-CHECKSUM_LENGTH:]
    assert checksum(head) == tail
    assert _from_base62(tail) == zlib.crc32(head.encode())
    assert len(checksum("")) == CHECKSUM_LENGTH and checksum("") == "000000"
    # The prefix is covered: the same random part under another prefix has another checksum.
    assert checksum("dep_test_" + head[9:]) != checksum(head)


def test_seed_example_values_are_refused_by_their_checksum() -> None:
    # The documents' examples have the right shape but were never generated: no valid checksum.
    assert KeyParser(ERP).environment("dep_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6") is None
    assert KeyParser(ALLY).environment("da_k8s9f7d6a5s4d3f2g1h0j9k8l7m6n5o4") is None


def test_every_single_substitution_and_adjacent_transposition_of_a_key_is_refused() -> None:
    """Exhaustive for one key of each prefix: every position, every other character."""
    for fmt in (ERP, ALLY):
        parser = KeyParser(fmt)
        for prefix in (fmt.live, fmt.test):
            value = generate_key(prefix)
            for i, original in enumerate(value):
                for ch in ALPHABET + "_-.+/= ":
                    if ch != original:
                        bad = value[:i] + ch + value[i + 1:]
                        assert parser.environment(bad) is None, (i, ch)
            for i in range(len(value) - 1):
                if value[i] != value[i + 1]:
                    swapped = value[:i] + value[i + 1] + value[i] + value[i + 2:]
                    assert parser.environment(swapped) is None, i


# Keys built from hypothesis' own draws (not secrets), so a failure replays.
def _key(prefix: str) -> st.SearchStrategy[str]:
    return st.text(alphabet=ALPHABET, min_size=RANDOM_LENGTH, max_size=RANDOM_LENGTH).map(
        lambda r: prefix + r + checksum(prefix + r)
    )


_any_key = st.sampled_from(["dep_live_", "dep_test_", "da_", "da_test_"]).flatmap(
    lambda p: st.tuples(st.just(p), _key(p))
)


@settings(max_examples=100, deadline=None)
@given(key=_any_key, data=st.data())
def test_property_checksum_catches_substitutions(key: tuple[str, str], data: st.DataObject) -> None:
    prefix, value = key
    parser = KeyParser(ALLY if prefix.startswith("da_") else ERP)
    assert parser.environment(value) == ("test" if "test" in prefix else "live")
    i = data.draw(st.integers(0, len(value) - 1))
    ch = data.draw(st.characters(codec="utf-8").filter(lambda c: c != value[i]))
    assert parser.environment(value[:i] + ch + value[i + 1:]) is None


@settings(max_examples=100, deadline=None)
@given(key=_any_key, data=st.data())
def test_property_checksum_catches_adjacent_transpositions(key: tuple[str, str], data: st.DataObject) -> None:
    prefix, value = key
    parser = KeyParser(ALLY if prefix.startswith("da_") else ERP)
    i = data.draw(st.integers(0, len(value) - 2))
    swapped = value[:i] + value[i + 1] + value[i] + value[i + 2:]
    if swapped != value:
        assert parser.environment(swapped) is None


def test_da_test_keys_are_never_read_as_live_da_keys() -> None:
    parser = KeyParser(ALLY)
    for _ in range(200):
        assert parser.environment(generate_key("da_test_")) == "test"
        assert parser.environment(generate_key("da_")) == "live"
    # A live key whose random part happens to start with "test" is still live (no "_" in the body).
    head = "da_test" + "A" * (RANDOM_LENGTH - 4)
    live = head + checksum(head)
    assert len(live) == len("da_") + BODY_LENGTH
    assert parser.environment(live) == "live"
    # A da_test_ body checksummed as if it were live (head "da_" + "test_..." ) has a "_" in its body: refused.
    fake_head = "da_test_" + "B" * (RANDOM_LENGTH - 5)
    assert parser.environment(fake_head + checksum(fake_head)) is None
    # The order of the prefixes in the format does not matter: longest first.
    flipped = KeyParser(KeyFormat(live="da_test_", test="da_"))
    assert flipped.environment(generate_key("da_test_")) == "live"
    assert flipped.environment(generate_key("da_")) == "test"


def test_keys_of_the_other_platform_are_refused() -> None:
    assert KeyParser(ERP).environment(generate_key("da_")) is None
    assert KeyParser(ERP).environment(generate_key("da_test_")) is None
    assert KeyParser(ALLY).environment(generate_key("dep_live_")) is None


@pytest.mark.parametrize(
    "value",
    [
        "",
        "dep_live_",
        "dep_live",
        "Bearer dep_live_x",
        "DEP_LIVE_" + "a" * 32,
        "dep_live_" + "a" * 31,
        "dep_live_" + "a" * 33,
        "dep_live_" + "a" * 10_000,
        "dep_live_" + "\u00e9" * 32,
        "dep_live_" + "\x00" * 32,
        "dep_live_" + " " * 32,
        "dep_prod_" + "a" * 32,
        " dep_live_" + "a" * 32,
    ],
)
def test_malformed_values_are_refused_without_raising(value: str) -> None:
    assert KeyParser(ERP).environment(value) is None


def test_truncated_and_extended_keys_are_refused() -> None:
    parser = KeyParser(ERP)
    value = generate_key("dep_live_")
    for n in range(len(value)):
        assert parser.environment(value[:n]) is None
    for extra in ("0", "a", "_", " ", "\n"):
        assert parser.environment(value + extra) is None
        assert parser.environment(extra + value) is None


def test_key_ids() -> None:
    ids = {generate_key_id() for _ in range(500)}
    assert len(ids) == 500
    for key_id in ids:
        assert re.fullmatch(r"key_[0-9A-Za-z]{12}", key_id), key_id
        assert is_key_id(key_id)
    for bad in ["", "key_", "key_abc123", "key_" + "a" * 11, "key_" + "a" * 13, "KEY_" + "a" * 12,
                "key-" + "a" * 12, "key_" + "a" * 11 + "_", "key_" + "a" * 11 + "\u00e9", "kay_" + "a" * 12]:
        assert not is_key_id(bad), bad


def test_shape_accepts_exactly_the_base62_alphabet_in_the_body() -> None:
    # shape checks the alphabet with str.isascii and str.isalnum: letters and digits of other scripts
    # (isalnum is true for "٣", "é", "ａ") and every ASCII non-alphanumeric must still be refused.
    parser = KeyParser(ERP)
    for code in range(0x10000):
        c = chr(code)
        assert (parser.shape("dep_live_" + "a" * 31 + c) is not None) == (c in ALPHABET), repr(c)
