"""The management API's models (gateway/admin/models.py) against the code they describe.

The error bodies are rendered by gateway/errors.py, not through the models (that code is on every refused
request); these tests hold the two together. And a validation problem names the field as the document does,
in words that never repeat the value sent.
"""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from gateway import errors
from gateway.admin.models import AllyError, Error, KeyRotate, key_models, problem
from gateway.keys.service import KeyInputError, check_permissions
from gateway.policy.rules import parse_policy


def every_error() -> list[type[errors.GatewayError]]:
    found, todo = [], [errors.GatewayError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return found


@pytest.mark.parametrize("cls", every_error(), ids=lambda c: c.__name__)
@pytest.mark.parametrize("field", [None, "name"])
def test_every_error_body_is_the_documented_error(cls: type[errors.GatewayError], field: str | None) -> None:
    """Each GatewayError, in each format, with and without ``field``, is exactly what the OpenAPI document's
    ``Error`` describes (the models refuse unknown properties, so a property added to one side fails)."""
    error = cls.__new__(cls)
    errors.GatewayError.__init__(error, field=field)
    for fmt, model in (("deployerp", Error), ("deployally", AllyError)):
        doc = model.model_validate_json(error.body(fmt), strict=True)
        assert (doc.error.field if field else None) == field


def test_the_error_check_can_fail() -> None:
    """A property the document does not have is refused (the check above is not vacuous)."""
    body = json.loads(errors.InvalidToken().body("deployerp"))
    body["error"]["hint"] = "x"
    with pytest.raises(ValidationError):
        Error.model_validate(body)


def refusal(model: type, body: object) -> tuple[str, str]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate_json(json.dumps(body))
    found = problem(caught.value, model)
    return found.field, found.message


def test_problems_name_the_documented_field_whatever_the_spelling() -> None:
    create = key_models(("standard", "limited")).create
    base = {"name": "x", "permissions": ["servers:read"]}
    assert refusal(create, {**base, "allowed_ips": ["10.0.0.0/33"]}) == (
        "ip_whitelist", "ip_whitelist[0]: must be an IP address or CIDR network like 203.0.113.0/24")
    assert refusal(create, {**base, "rotation_enabled": "yes"}) == ("auto_rotate", "auto_rotate: must be true or false")
    assert refusal(create, {**base, "ip_whitelist": [], "allowed_ips": []}) == (
        "ip_whitelist", "ip_whitelist: give ip_whitelist or allowed_ips, not both")
    assert refusal(create, {**base, "rate_limit_tier": "gold"}) == (
        "rate_limit_tier", "rate_limit_tier: must be one of: standard, limited")
    assert refusal(create, ["not", "an", "object"]) == ("body", "body: must be a JSON object")
    assert refusal(KeyRotate, {"grace_period": True})[0] == "grace_period"


def test_problems_never_repeat_the_value() -> None:
    """What was sent may be a secret pasted into the wrong field: no message quotes it."""
    secret = "dep_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6"
    create = key_models(("standard",)).create
    for body in ({"name": secret + "\n"}, {"name": "x", "permissions": [secret.upper()]},
                 {"name": "x", "ip_whitelist": [secret]}, {"name": "x", "rotation_period": secret},
                 {"name": "x", "rate_limit_tier": secret}, {"name": "x", "expires_at": secret},
                 {"name": "x", "environment": secret}, {"name": [secret]}):
        field, message = refusal(create, body)
        assert secret[9:] not in message.lower(), (body, message)
    assert secret not in refusal(KeyRotate, {"grace_period": secret})[1]
    # A key has the form of a scope: the policy, not the model, refuses it, in words of its own.
    policy = parse_policy({"routes": [{"path": "/v1/servers", "methods": ["GET"], "scopes": ["servers:read"]}]},
                          "test.yaml")
    with pytest.raises(KeyInputError) as caught:
        check_permissions(["servers:read", secret], policy)
    assert caught.value.field == "permissions" and secret[9:] not in str(caught.value), caught.value
