"""The message catalogues (gateway/messages/): every answer the gateway writes itself, in each platform's language.

Every error class and variant, and every id of the catalogues, is rendered in both formats: the body has the
format's exact shape and a non-empty message in the format's language (deployERP English, DeployAlly
Portuguese); the operator's ``messages`` overrides replace exactly the ids they name, in the configured format
only; and no code under gateway/ raises an answer with words of its own instead of a catalogue id.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway import errors, messages
from gateway.admin.models import KeyQuery, KeyRotate, key_models, problem
from gateway.config import reference
from gateway.config.settings import ConfigError, load_settings
from gateway.errors import ErrorFormat, GatewayError, error_format, render

ROOT = Path(__file__).resolve().parents[2]
EN, PT = messages.catalogue("deployerp"), messages.catalogue("deployally")
# Entries that may read the same in both languages (a product or protocol name alone). None do today.
SAME_IN_BOTH: frozenset[str] = frozenset()
# Portuguese letters an English text never has: a cheap sign that a text sits in the wrong catalogue.
_PORTUGUESE = re.compile("[ãõçáéíóúâêôà]|\\b(não|inválid|deve|chave|requisição)", re.I)
SAMPLE = {"where": "name", "max_length": 200, "min_length": 1, "ge": 1, "le": 500, "limit": 65536,
          "expected": "live, test", "first": "ip_whitelist", "second": "allowed_ips", "item": 2,
          "key_id": "key_abc123", "scope": "servers:read"}


def _classes() -> list[type[GatewayError]]:
    return sorted(reference.error_classes_all(), key=lambda c: (c.__module__, c.__qualname__))


def _code_classes() -> dict[str, type[GatewayError]]:
    out: dict[str, type[GatewayError]] = {}
    for cls in _classes():
        out.setdefault(cls.code, cls)
    return out


def test_both_catalogues_hold_the_same_ids_and_placeholders() -> None:
    assert set(EN) == set(PT), set(EN) ^ set(PT)
    for message_id in EN:
        assert messages.placeholders(EN[message_id]) == messages.placeholders(PT[message_id]), message_id


def test_each_catalogue_is_in_its_platforms_language() -> None:
    """DeployAlly's words are Portuguese: none is the English text (unless whitelisted); deployERP's are English:
    none has a Portuguese letter or word."""
    same = {i for i in EN if EN[i] == PT[i]} - SAME_IN_BOTH
    assert same == set(), f"not translated: {sorted(same)}"
    portuguese = {i: EN[i] for i in EN if _PORTUGUESE.search(EN[i])}
    assert portuguese == {}, portuguese


def test_the_language_check_can_fail() -> None:
    assert _PORTUGUESE.search("API Key inválida ou não fornecida")
    assert not _PORTUGUESE.search(EN["invalid_token.malformed_scheme"])


def test_the_seed_messages_are_the_catalogues() -> None:
    """The DeployAlly guide's 401 and 403 bodies, word for word ("Erros de Autenticação"), and the deployERP
    guide's missing-token message ("Missing Authentication")."""
    assert PT["authentication_required"] == PT["invalid_token"] == "API Key inválida ou não fornecida"
    assert PT["insufficient_permissions"] == "API Key não tem permissão para este recurso"
    assert EN["authentication_required"] == "No authentication token provided"
    assert json.loads(errors.AuthenticationRequired().body("deployally")) == {
        "success": False, "error": {"code": "UNAUTHORIZED", "message": "API Key inválida ou não fornecida"}}
    assert json.loads(errors.InsufficientPermissions().body("deployally")) == {
        "success": False, "error": {"code": "FORBIDDEN", "message": "API Key não tem permissão para este recurso"}}


def test_a_jwt_is_never_called_an_api_key() -> None:
    """An expired or refused JWT is not "API Key expirada": the JWT variants name the JWT, in both languages."""
    for cls in (errors.ExpiredJWT, errors.InvalidJWT, errors.JWTNotYetValid, errors.JWTAlgorithm,
                errors.JWTNoKeyId, errors.JWTNoKey, errors.JWTLacksScope):
        error = cls()
        assert "JWT" in error.message and "JWT" in error.ally_message, cls
        assert "API" not in error.message + error.ally_message, cls
    assert errors.ExpiredToken().ally_message == "API Key expirada"


def test_every_class_has_a_message_in_both_catalogues() -> None:
    missing = [f"{c.__qualname__}: {c.message_id}" for c in _classes() if c.message_id not in EN]
    assert missing == []
    for cls in _classes():
        assert cls.message_id.split(".", 1)[0] == cls.code or cls.message_id == "internal_error", cls


def test_every_id_belongs_to_a_code_the_gateway_answers() -> None:
    codes = _code_classes()
    orphans = [i for i in EN if i.split(".", 1)[0] not in codes]
    assert orphans == ["internal_error"] or orphans == [], orphans


@pytest.mark.parametrize("fmt", messages.FORMATS)
@pytest.mark.parametrize("message_id", sorted(EN))
def test_every_id_renders_in_its_formats_shape_and_language(message_id: str, fmt: str) -> None:
    cls = _code_classes().get(message_id.split(".", 1)[0], GatewayError)
    error = cls.__new__(cls)
    needed = messages.placeholders(EN[message_id])
    GatewayError.__init__(error, message_id, **{k: v for k, v in SAMPLE.items() if k in needed})
    status, headers, body = render(error, fmt)
    doc = json.loads(body)
    if fmt == "deployally":
        assert set(doc) == {"success", "error"} and doc["success"] is False
        assert set(doc["error"]) == {"code", "message"} and doc["error"]["code"] == cls.ally_code
        assert doc["error"]["code"] == doc["error"]["code"].upper()
    else:
        assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message", "status"}
        assert (doc["error"]["code"], doc["error"]["status"]) == (cls.code, status)
    text = doc["error"]["message"]
    assert text == messages.fill((PT if fmt == "deployally" else EN)[message_id], SAMPLE)
    assert text.strip() and "{" not in text and "}" not in text
    assert dict(headers)[b"content-length"] == str(len(body)).encode()
    if status == 401 and cls.bearer_error is not None:
        challenge = dict(headers)[b"www-authenticate"].decode("ascii")  # RFC 6750 3: ASCII only
        assert challenge.endswith(f'error_description="{messages.header_text(text)}"'), challenge


@pytest.mark.parametrize("fmt", messages.FORMATS)
def test_every_error_class_and_variant_renders(fmt: str) -> None:
    """Every GatewayError subclass as raised (no values): its own id's words, the format's status and codes."""
    for cls in _classes():
        if messages.placeholders(EN[cls.message_id]):
            continue  # raised only with its values: covered id by id above
        error = cls.__new__(cls)
        status, _, body = render(error, fmt)
        doc = json.loads(body)
        assert status == cls.status
        assert doc["error"]["message"] == (PT if fmt == "deployally" else EN)[cls.message_id], cls


def test_an_override_replaces_its_id_in_the_configured_format_only(tmp_path: Path) -> None:
    """``messages`` in the configuration file: that id's words change, in the configured format, in the body and
    in the WWW-Authenticate challenge; its variants and the other format keep the catalogue's."""
    (tmp_path / "config.yaml").write_text(
        "error_format: deployally\n"
        "messages:\n"
        "  invalid_token: \"Chave desconhecida: crie outra no painel\"\n"
        "  validation_error.missing: \"O campo {where} é obrigatório\"\n", encoding="utf-8")
    settings = load_settings(tmp_path / "config.yaml", environ={})
    fmt = error_format(settings.error_format, settings.messages)
    assert fmt is error_format("deployally", dict(settings.messages))  # made once per configuration
    _, headers, body = fmt.render(errors.InvalidToken())
    assert json.loads(body)["error"]["message"] == "Chave desconhecida: crie outra no painel"
    assert dict(headers)[b"www-authenticate"].endswith(b'error_description="Chave desconhecida: crie outra no painel"')
    _, _, body = fmt.render(errors.ValidationFailed("validation_error.missing", field="name", where="name"))
    assert json.loads(body)["error"] == {"code": "VALIDATION_ERROR", "message": "O campo name é obrigatório",
                                         "field": "name"}
    assert json.loads(fmt.render(errors.RevokedKey())[2])["error"]["message"] == PT["invalid_token.revoked"]
    assert json.loads(render(errors.InvalidToken(), "deployally")[2])["error"]["message"] == PT["invalid_token"]
    assert json.loads(render(errors.InvalidToken(), "deployerp")[2])["error"]["message"] == EN["invalid_token"]


@pytest.mark.parametrize(("overrides", "named", "says"), [
    ({"invalid_tokn": "x"}, "messages.invalid_tokn", "unknown message id"),
    ({"validation_error.missing": "{value} is required"}, "messages.validation_error.missing",
     "unknown placeholder {value}"),
    ({"invalid_token": "{where.__class__}"}, "messages.invalid_token", "placeholders are plain names"),
    ({"invalid_token": "  "}, "messages.invalid_token", "non-empty"),
])
def test_a_bad_override_is_a_configuration_error_naming_the_id(overrides: dict[str, str], named: str,
                                                               says: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ={}, overrides={"messages": overrides})
    assert str(info.value).startswith(f"{named}: "), str(info.value)
    assert says in str(info.value)


VALIDATION = [
    # (model, body, field, message id): each pydantic error type the management API can meet
    ("create", {"permissions": ["servers:read"]}, "name", "validation_error.missing"),
    ("create", {"name": "x", "colour": "blue"}, "colour", "validation_error.extra_forbidden"),
    ("create", {"name": 5}, "name", "validation_error.string_type"),
    ("create", {"name": ""}, "name", "validation_error.string_too_short"),
    ("create", {"name": "n" * 201}, "name", "validation_error.string_too_long"),
    ("create", {"name": "x", "permissions": []}, "permissions", "validation_error.permissions_empty"),
    ("create", {"name": "x", "permissions": "servers:read"}, "permissions", "validation_error.list_type"),
    ("create", {"name": "x", "permissions": ["SERVERS READ"]}, "permissions", "validation_error.pattern_scope"),
    ("create", {"name": " "}, "name", "validation_error.pattern_name"),
    ("create", {"name": "x", "auto_rotate": "yes"}, "auto_rotate", "validation_error.bool_type"),
    ("create", {"name": "x", "environment": "prod"}, "environment", "validation_error.literal_error"),
    ("create", {"name": "x", "expires_at": "soon"}, "expires_at", "validation_error.datetime"),
    ("create", {"name": "x", "allowed_ips": ["10.0.0.0/33"]}, "ip_whitelist", "validation_error.network"),
    ("create", {"name": "x", "rotation_period": "0d"}, "rotation_period", "validation_error.period_zero"),
    ("create", {"name": "x", "rotation_period": "99999999d"}, "rotation_period",
     "validation_error.period_too_long"),
    ("create", {"name": "x", "rotation_period": "soon"}, "rotation_period", "validation_error.pattern_period"),
    ("create", {"name": "x", "ip_whitelist": [], "allowed_ips": []}, "ip_whitelist",
     "validation_error.both_spellings"),
    ("rotate", {"grace_period": "later"}, "grace_period", "validation_error.grace"),
    ("create", "[]", "body", "validation_error.not_object"),
    ("create", '{"name": ', "body", "validation_error.json_invalid"),
]


@pytest.mark.parametrize(("model", "body", "field", "message_id"), VALIDATION, ids=[v[3] for v in VALIDATION])
def test_pydantic_errors_are_the_catalogues_words_with_the_field(model: str, body: object, field: str,
                                                                 message_id: str) -> None:
    """pydantic's error types (missing, string_too_long, extra_forbidden...) become catalogue messages with the
    field name and the model's limit filled in, in either language, and never the value sent."""
    cls = KeyRotate if model == "rotate" else key_models(("standard",)).create
    raw = body if isinstance(body, str) else json.dumps(body)
    with pytest.raises(ValidationError) as caught:
        cls.model_validate_json(raw)
    found = problem(caught.value, cls)
    assert (found.field, found.message_id) == (field, message_id)
    for fmt in messages.FORMATS:
        error = errors.ValidationFailed(found.message_id, field=found.field, **found.values)
        message = json.loads(render(error, fmt)[2])["error"]["message"]
        assert message.startswith(found.where + ": "), message
        assert message == messages.fill((PT if fmt == "deployally" else EN)[message_id], found.values)
        for sent in ("blue", "soon", "later", "prod", "SERVERS READ", "10.0.0.0/33", "n" * 201):
            assert sent not in message, message
    if message_id == "validation_error.string_too_long":
        assert "200" in found.message


def test_an_unknown_query_parameter_is_named_as_one() -> None:
    with pytest.raises(ValidationError) as caught:
        KeyQuery.model_validate({"colour": "blue"})
    found = problem(caught.value, KeyQuery, unknown="validation_error.unknown_query")
    assert render(errors.ValidationFailed(found.message_id, field=found.field, **found.values),
                  "deployally")[2].decode() == (
        '{"success":false,"error":{"code":"VALIDATION_ERROR","message":"colour: parâmetro de consulta desconhecido",'
        '"field":"colour"}}')


# Constructors that take a message id (first positional argument, or the second for KeyInputError).
_ID_TAKERS = {"Conflict": 0, "Refused": 0, "KeyInputError": 1}


def _literal_messages() -> list[str]:
    """``file:line Class("...")`` for every call under gateway/ that gives an error a text that is not a
    catalogue id: what a runtime-built English message looks like."""
    names = {c.__name__: 0 for c in _classes()} | _ID_TAKERS
    found = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name not in names or len(node.args) <= names[name]:
                continue
            arg = node.args[names[name]]
            if isinstance(arg, ast.JoinedStr) or (isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                                                 and arg.value not in EN):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}(...)")
    return found


def test_no_answer_is_given_words_outside_the_catalogues() -> None:
    assert _literal_messages() == []


def test_the_literal_message_check_can_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "gateway").mkdir()
    (tmp_path / "gateway" / "x.py").write_text(
        'raise InsufficientPermissions("No policy rule allows this method and path")\n'
        'raise Conflict(f"rotate {other} instead")\nraise NotFound()\n'
        'raise ValidationFailed("validation_error.missing")\n')
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert _literal_messages() == ["gateway/x.py:1 InsufficientPermissions(...)", "gateway/x.py:2 Conflict(...)"]


def test_error_format_is_made_once_per_configuration() -> None:
    assert error_format("deployally") is error_format("deployally", {})
    assert error_format("deployally", {"invalid_token": "x"}) is not error_format("deployally")
    assert isinstance(error_format("deployerp"), ErrorFormat)


def test_an_applications_own_error_class_keeps_its_words() -> None:
    """``AuthMiddleware`` answers any GatewayError the application raises: a subclass of its own, with a code no
    catalogue has, is answered with the words it gives, else with its gateway ancestor's."""

    class QuotaExceeded(errors.GatewayError):
        status, code, ally_code = 429, "quota_exceeded", "QUOTA_EXCEEDED"
        message = "The monthly quota is used up"
        ally_message = "A cota mensal acabou"

    class Mine(errors.InsufficientPermissions):
        code = "not_the_owner"

    assert json.loads(render(QuotaExceeded(), "deployerp")[2])["error"]["message"] == "The monthly quota is used up"
    assert json.loads(render(QuotaExceeded(), "deployally")[2]) == {
        "success": False, "error": {"code": "QUOTA_EXCEEDED", "message": "A cota mensal acabou"}}
    assert json.loads(render(Mine(), "deployally")[2])["error"] == {"code": "FORBIDDEN",
                                                                   "message": PT["insufficient_permissions"]}
    assert str(Mine()) == EN["insufficient_permissions"]
