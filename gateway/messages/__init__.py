"""The words of every answer the gateway writes itself: one message catalogue per error format.

    gateway/messages/deployerp.yaml    English, the language of the deployERP guide
    gateway/messages/deployally.yaml   Portuguese, the language of the DeployAlly guide

Each catalogue maps a *message id* to a text. An id is the answer's deployERP ``code`` (``invalid_token``), or
the code, a dot and a variant (``invalid_token.malformed_scheme``), so one code can say several precise things
while a client still branches on the code alone. Both catalogues hold the same ids with the same
``{placeholders}`` (``{where}``, ``{max_length}``, ``{key_id}``), filled in by :func:`fill`; an operator may
replace any text with the ``messages`` setting, checked by :func:`override_problems`.

The catalogues are YAML files shipped in the package rather than Python dicts: a translator edits one flat
file per language, with no code around it, and a diff of a translation reads as text. They are read once,
when first asked for; the gateway then renders each answer from what :class:`gateway.errors.ErrorFormat`
made of them at start-up.
"""

from __future__ import annotations

import functools
import string
import unicodedata
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType

import yaml

FORMATS = ("deployerp", "deployally")
# The catalogue every English text (logs, the CLI, exception messages) comes from.
ENGLISH = "deployerp"
MAX_OVERRIDE = 500  # characters: a message is one sentence, and it is sent on every refusal that uses it


@functools.cache
def catalogue(error_format: str) -> Mapping[str, str]:
    """The shipped catalogue of ``error_format`` (``deployerp`` or ``deployally``): message id -> text."""
    if error_format not in FORMATS:
        raise ValueError(f"no message catalogue for {error_format!r} (use {' or '.join(FORMATS)})")
    text = resources.files(__name__).joinpath(f"{error_format}.yaml").read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict) or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in doc.items()):
        raise ValueError(f"gateway/messages/{error_format}.yaml: every entry must be `id: non-empty text`")
    return MappingProxyType(doc)


def ids() -> frozenset[str]:
    """Every message id (the English catalogue's; the others hold the same, as tests/unit/test_messages.py checks)."""
    return frozenset(catalogue(ENGLISH))


def placeholders(text: str) -> frozenset[str]:
    """The ``{name}`` placeholders of ``text``. Raises ValueError for a brace that is not one (``{0}``,
    ``{a.b}``, ``{x!r}``, an unmatched ``{``): a text is filled with plain values only."""
    found = set()
    for _, name, spec, conversion in string.Formatter().parse(text):
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError("placeholders are plain names in braces, like {where}")
        found.add(name)
    return frozenset(found)


class _Params(dict[str, object]):
    def __missing__(self, name: str) -> str:
        # Not reached for the shipped texts (every placeholder is given); an answer never fails for one.
        return ""


def fill(text: str, params: Mapping[str, object]) -> str:
    """``text`` with its placeholders replaced by ``params`` (missing ones left empty)."""
    return text.format_map(_Params(params)) if params else text


def header_text(text: str) -> str:
    """``text`` as an RFC 6750 3 ``error_description``: printable ASCII without ``"`` or ``\\`` (accents dropped:
    ``não`` -> ``nao``), so the WWW-Authenticate header says what the body says, in the same language."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "'" for c in folded)


def override_problems(overrides: Mapping[str, object]) -> list[tuple[str, str]]:
    """``(id, why)`` for each override of the ``messages`` setting that cannot be used: an id no catalogue has,
    a text that is empty, too long or names a placeholder its message does not have."""
    known = catalogue(ENGLISH)
    out = []
    for mid, text in overrides.items():
        if mid not in known:
            out.append((mid, "unknown message id (the ids are listed in docs/troubleshooting.md)"))
            continue
        if not isinstance(text, str) or not text.strip():
            out.append((mid, "must be a non-empty text"))
            continue
        if len(text) > MAX_OVERRIDE:
            out.append((mid, f"must be at most {MAX_OVERRIDE} characters"))
            continue
        try:
            names = placeholders(text)
        except ValueError as exc:
            out.append((mid, str(exc)))
            continue
        extra = names - placeholders(known[mid])
        if extra:
            allowed = ", ".join(f"{{{n}}}" for n in sorted(placeholders(known[mid]))) or "none"
            out.append((mid, f"unknown placeholder {{{sorted(extra)[0]}}} (this message has: {allowed})"))
    return out


def english(message_id: str, params: Mapping[str, object]) -> str:
    """The English text of ``message_id`` with ``params``: for logs, exception messages and the CLI."""
    return fill(catalogue(ENGLISH)[message_id], params)


def problem_text(message_id: str, where: str, params: Mapping[str, object]) -> str:
    """The English text of a validation problem without its ``{where}: `` lead, for a caller that names the
    field its own way (the CLI names the flag)."""
    full = english(message_id, {**params, "where": where})
    return full[len(where) + 2:] if full.startswith(where + ": ") else full


@functools.cache
def page_texts(error_format: str) -> Mapping[str, str]:
    """The dashboard's words in the language of ``error_format`` (``dashboard-<format>.yaml`` beside the error
    catalogues): label id -> text. Its error messages are the error catalogue's, like every other answer's."""
    if error_format not in FORMATS:
        raise ValueError(f"no dashboard texts for {error_format!r} (use {' or '.join(FORMATS)})")
    text = resources.files(__name__).joinpath(f"dashboard-{error_format}.yaml").read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict) or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in doc.items()):
        raise ValueError(f"gateway/messages/dashboard-{error_format}.yaml: every entry must be `id: non-empty text`")
    return MappingProxyType(doc)
