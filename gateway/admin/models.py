"""The management API's resources as pydantic models: the one place their fields are defined.

    requests   KeyCreate (POST /api-keys), KeyUpdate (PATCH /api-keys/{id}), KeyRotate (POST .../rotate),
               KeyQuery (the query of GET /api-keys)
    answers    ApiKey (a key as listed and shown), KeyCreated (with its value, shown once), KeyPage,
               Rotation (old_key/new_key), NewKey (also a value revealed by POST .../reveal), AuthTest
               (with RateLimit); PageMeta (beside a DeployAlly list)
    errors     Error (deployERP: ``{"error": {...}}``), AllyError (DeployAlly: ``{"success": false, ...}``)

Every constraint on a field (lengths, the scope and duration patterns, networks, the configured tiers, unknown
fields refused) is declared here and nowhere else. The API validates what it is sent with these models and
serialises every answer through them; the CLI checks its flags as the same JSON body; gateway/admin/openapi.py
builds the OpenAPI document (and the docs page) from their JSON Schema. So none of them can disagree about what
a field takes. What needs state stays in :mod:`gateway.keys.service`: scopes the policy knows, no key granting
more than its caller holds, an expiry in the future, a key's state.

Two parts follow the configuration and are filled in by :func:`key_models`: the tiers a key may be given and
the name of the allowlist in answers (``ip_whitelist``, or ``allowed_ips`` in the DeployAlly format). A request
may spell two fields either way (``ip_whitelist`` or ``allowed_ips``, ``auto_rotate`` or the deployERP guide's
``rotation_enabled``), not both ways at once.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Annotated, Any, Literal, NamedTuple, Self

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    create_model,
)

from gateway.config.settings import Settings, parse_duration
from gateway.keys.record import KeyRecord, format_duration
from gateway.keys.service import MAX_PERIOD_SECONDS
from gateway.mailaddr import MAX_ADDRESS, check_address
from gateway.messages import english, problem_text
from gateway.network import parse_network
from gateway.policy.rules import SCOPE_RE

MAX_NAME = 200
MAX_DESCRIPTION = 1000
MAX_PERIOD = "36500d"  # MAX_PERIOD_SECONDS as a duration

# Patterns, each enforced by pydantic (so exactly as the OpenAPI document states it) and explained to the client
# by the message _PATTERN_PROBLEMS names when it does not match.
NAME_PATTERN = r"^[^\x00-\x1f\x7f]*[^\x00-\x20\x7f][^\x00-\x1f\x7f]*$"  # printable, not only spaces
SCOPE_PATTERN = SCOPE_RE.pattern  # what a key may hold (gateway.policy.rules.valid_scope)
# gateway.config.settings.parse_duration reads these (it takes a little more: capitals, surrounding spaces).
DURATION_PATTERN = r"^(0|[0-9]{1,10}[smhdw])$"
PERIOD_PATTERN = r"^[0-9]{1,10}[smhdw]$"
KEY_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

_PATTERN_PROBLEMS = {
    NAME_PATTERN: "validation_error.pattern_name",
    SCOPE_PATTERN: "validation_error.pattern_scope",
    DURATION_PATTERN: "validation_error.pattern_duration",
    PERIOD_PATTERN: "validation_error.pattern_period",
}


# --- field types ----------------------------------------------------------------------------------------------


class Refused(ValueError):
    """What a validator here says of a value: a message of the catalogues (``validation_error.network``...) that
    never repeats it, with its values; the exception's own text is the English one."""

    def __init__(self, message_id: str, **params: object) -> None:
        self.message_id = message_id
        self.params = params
        super().__init__(problem_text(message_id, "value", params))


class TooLong(Refused):
    def __init__(self) -> None:
        super().__init__("validation_error.period_too_long", limit=MAX_PERIOD)


def _network(text: str) -> str:
    try:
        return str(parse_network(text))
    except ValueError:
        raise Refused("validation_error.network") from None


def _utc(moment: datetime) -> datetime:
    """A time without a zone is UTC; every time is kept in UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _whole_seconds(moment: datetime) -> datetime:
    return _utc(moment).replace(microsecond=0)


def _at_most_max(text: str) -> str:
    if parse_duration(text) > MAX_PERIOD_SECONDS:
        raise TooLong()
    return text


def _period(text: str) -> str:
    if parse_duration(text) == 0:
        raise Refused("validation_error.period_zero")
    return _at_most_max(text)


def _one_duration(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """One message for a value that is neither form of a grace period (not one per form tried)."""
    try:
        return handler(value)
    except ValidationError as exc:
        if any(e["type"] == "less_than_equal" or isinstance((e.get("ctx") or {}).get("error"), TooLong)
               for e in exc.errors()):
            raise TooLong() from None
        raise Refused("validation_error.grace") from None


def _email(text: str) -> str:
    try:
        return check_address(text)
    except ValueError:
        raise Refused("validation_error.email", limit=MAX_ADDRESS) from None


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME, pattern=NAME_PATTERN),
                 Field(examples=["ci-pipeline"])]
Description = Annotated[str, StringConstraints(max_length=MAX_DESCRIPTION)]
Scope = Annotated[str, StringConstraints(pattern=SCOPE_PATTERN),
                  Field(description="resource:action, resource:* or *", examples=["servers:read", "instances:*"])]
Permissions = Annotated[list[Scope], Field(min_length=1), AfterValidator(_unique)]
Network = Annotated[str, AfterValidator(_network),
                    Field(description="an IP address or a CIDR network",
                          examples=["203.0.113.0/24", "198.51.100.45", "2001:db8::/32"])]
Expiry = Annotated[datetime, AfterValidator(_utc), Field(examples=["2027-01-31T00:00:00Z"])]
Period = Annotated[str, StringConstraints(pattern=PERIOD_PATTERN), AfterValidator(_period),
                   Field(description=f"longer than zero, at most {MAX_PERIOD}", examples=["90d"])]
Grace = Annotated[
    Annotated[str, StringConstraints(pattern=DURATION_PATTERN), AfterValidator(_at_most_max),
              Field(examples=["7d"])]
    | Annotated[int, Field(ge=0, le=MAX_PERIOD_SECONDS, description="seconds")],
    WrapValidator(_one_duration),
]
# Personal data: shown to those who can read the key, never logged (gateway.mailaddr.masked) or made a label.
Email = Annotated[str, AfterValidator(_email), Field(
    description="where the key's notices go (expiry, rotation): a plain address, at most 254 characters",
    examples=["ops@example.com"], json_schema_extra={"format": "email"})]
Environment = Literal["live", "test"]
Status = Literal["active", "expired", "revoked"]
RotationStatus = Literal["ok", "due", "grace_period"]
KeyId = Annotated[str, Field(pattern=KEY_ID_PATTERN, examples=["key_a1B2c3D4e5F6"])]
# A time in an answer: UTC, whole seconds ("2027-01-31T00:00:00Z").
Instant = Annotated[datetime, AfterValidator(_whole_seconds), Field(examples=["2027-01-31T00:00:00Z"])]


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def _optional(description: str | None = None, **kwargs: Any) -> Any:
    """A field that may be left out but, when given, is never null: absent is not the same as ``null`` (which
    clears a value). The model's ``None`` only stands for "not given" and is never sent or documented."""
    return Field(default=None, description=description, json_schema_extra=_no_default, **kwargs)


IP_ALIASES = AliasChoices("ip_whitelist", "allowed_ips")
ROTATE_ALIASES = AliasChoices("auto_rotate", "rotation_enabled")


def public_name(model: type[BaseModel], field: str) -> str:
    """The name the API documents for ``field`` (the first of its spellings)."""
    alias = model.model_fields[field].validation_alias
    return str(alias.choices[0]) if isinstance(alias, AliasChoices) else field


def _spellings(model: type[BaseModel]) -> list[tuple[str, ...]]:
    return [tuple(str(c) for c in info.validation_alias.choices) for info in model.model_fields.values()
            if isinstance(info.validation_alias, AliasChoices)]


def _document_spellings(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """List every spelling of an aliased field in the schema, and that only one may be given."""
    props = schema.get("properties", {})
    for first, *others in _spellings(model):
        if first not in props:
            continue
        for other in others:
            props[other] = {**props[first], "description": f"another name for `{first}`: give one of the two"}
            schema.setdefault("allOf", []).append({"not": {"required": [first, other]}})


class _Request(BaseModel):
    """A request body: nothing unknown, no type coerced (``"yes"`` is not ``true``, ``"5"`` is not ``5``).

    A field's second spelling given beside its first is unknown to pydantic (the field has its value already):
    :func:`problem` reports it as the field given twice."""

    # Validated from JSON only (model_validate_json): a function validator on the whole model would make
    # pydantic validate the decoded dict as Python, where strict mode refuses a time given as text.
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_document_spellings)


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests -------------------------------------------------------------------------------------------------


class KeyCreate(_Request):
    """A new key. Its value is in the answer (`KeyCreated`) and nowhere else, ever."""

    name: Name
    permissions: Permissions = _optional(
        "scopes, each held by the caller (`servers:read`, `instances:*`); by default the caller's own")
    allowed_ips: list[Network] = Field(
        default_factory=list, validation_alias=IP_ALIASES,
        description="IP addresses or CIDR networks the key may be used from (empty: anywhere)")
    expires_at: Expiry | None = Field(None, description="when the key stops working (null: never)")
    environment: Environment = _optional("`test` keys reach the test upstream only; by default the caller's")
    rate_limit_tier: str | None = Field(None, description="null: the default tier")
    auto_rotate: bool = Field(False, validation_alias=ROTATE_ALIASES,
                              description="rotate the key by itself once `rotation_period` has passed")
    rotation_period: Period | None = None
    grace_period: Grace | None = Field(
        None, description="how long the old key keeps working after a rotation (null: `rotation.grace_period`)")
    notification_email: Email | None = Field(None, description=(
        "where notices go: before the key expires or rotates, and once it has rotated (never a key value)"))
    description: Description | None = None


class KeyUpdate(_Request):
    """Changes to a key: only the fields given change; `null` clears a nullable one."""

    name: Name = _optional()
    permissions: Permissions = _optional("scopes, each held by the caller (replaces the list)")
    allowed_ips: list[Network] = _optional("replaces the allowlist (empty: anywhere)", validation_alias=IP_ALIASES)
    expires_at: Expiry | None = Field(None, description="null: never")
    rate_limit_tier: str | None = Field(None, description="null: the default tier")
    auto_rotate: bool = _optional(validation_alias=ROTATE_ALIASES)
    rotation_period: Period | None = None
    grace_period: Grace | None = Field(None, description="null: `rotation.grace_period`")
    notification_email: Email | None = Field(None, description="null: no notices")
    description: Description | None = None


class KeyRotate(_Request):
    """A rotation: a successor with the same everything but its value."""

    grace_period: Grace = _optional(
        "how long the old key keeps working (`7d`, `12h`, `0`, or seconds); by default the key's own "
        "`grace_period`, else `rotation.grace_period`")


class KeyQuery(BaseModel):
    """The query of ``GET /api-keys``: a page of keys, optionally of one environment or status."""

    model_config = ConfigDict(extra="forbid")  # query values are text: "50" is read as 50

    limit: int = Field(50, ge=1, le=500, description="keys per page")
    offset: int = Field(0, ge=0, le=10**9, description="keys to skip (`pagination.next_offset` of the last page)")
    environment: Environment = _optional("only keys of this environment")
    status: Status = _optional("only keys in this state")


# --- answers --------------------------------------------------------------------------------------------------


class ApiKey(_Answer):
    """A key as the API lists and shows it: never its value, never its hash."""

    id: KeyId
    name: str
    hint: str = Field(description="the last four characters of the key, to tell keys apart")
    permissions: list[str]
    allowed_ips: list[str] = Field(serialization_alias="ip_whitelist",
                                   description="IP addresses or CIDR networks the key may be used from")
    environment: Environment
    rate_limit_tier: str | None
    description: str | None
    status: Status
    created_at: Instant
    created_by: str | None = Field(description="the key (or `cli`, `jwt:<subject>`) that made it")
    expires_at: Instant | None
    revoked_at: Instant | None
    auto_rotate: bool
    rotation_period: str | None = Field(examples=["90d"])
    grace_period: str | None = Field(examples=["7d"], description="null: `rotation.grace_period`")
    notification_email: str | None = Field(examples=["ops@example.com"])
    rotation_due_at: Instant | None
    rotation_status: RotationStatus
    rotated_from: str | None
    replaced_by: str | None
    revealable: bool = Field(description=(
        "true: an automatic rotation made this key and holds its value until it is revealed, once "
        "(`POST .../api-keys/{id}/reveal`)"))
    last_used_at: Instant | None
    last_used_ip: str | None
    request_count: int = Field(ge=0)

    @classmethod
    def of(cls, record: KeyRecord, now: datetime) -> Self:
        """``record`` as shown at ``now`` (its status and rotation state depend on the time)."""
        return cls.model_validate({
            "id": record.id, "name": record.name, "hint": record.hint, "permissions": list(record.permissions),
            "allowed_ips": list(record.allowed_ips), "environment": record.environment,
            "rate_limit_tier": record.rate_limit_tier, "description": record.description,
            "status": record.status(now), "created_at": record.created_at, "created_by": record.created_by,
            "expires_at": record.expires_at, "revoked_at": record.revoked_at, "auto_rotate": record.auto_rotate,
            "rotation_period": format_duration(record.rotation_period), "rotation_due_at": record.rotation_due_at,
            "grace_period": format_duration(record.grace_period), "notification_email": record.notification_email,
            "revealable": record.held_value is not None,
            "rotation_status": record.rotation_state(now), "rotated_from": record.rotated_from,
            "replaced_by": record.rotated_to, "last_used_at": record.last_used_at,
            "last_used_ip": record.last_used_ip, "request_count": record.request_count,
        })

    def doc(self) -> dict[str, Any]:
        """The JSON document of this key, as the API sends it."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class KeyCreated(ApiKey):
    """A key just created, with its value: this answer is the only place the value ever appears."""

    value: str = Field(description="the key itself: store it now, it is never shown again")


class Pagination(_Answer):
    """Where this page is in the list."""

    limit: int
    offset: int
    next_offset: int | None = Field(description="the offset of the next page (null: this is the last)")


class KeyPage(_Answer):
    """One page of keys."""

    data: list[ApiKey]
    pagination: Pagination


class PageMeta(_Answer):
    """What a DeployAlly page of keys says beside its list: ``{"success": true, "data": [...], "meta": {...}}``."""

    pagination: Pagination


class RetiredKey(_Answer):
    """The key rotated out."""

    id: str
    expires_at: Instant | None = Field(
        description="when it stops working: now plus the grace period, or its own expiry if sooner")


class NewKey(_Answer):
    """Its successor."""

    id: str
    value: str = Field(description="the new key: shown in this answer only")
    created_at: Instant


class Rotation(_Answer):
    """A rotation's outcome, as the deployERP guide shows it."""

    old_key: RetiredKey
    new_key: NewKey


class Window(_Answer):
    """One window of a rate limit."""

    limit: int | None = Field(description="requests the window allows (null: unlimited)", examples=[1000])
    remaining: int | None = Field(description="requests left in it now", examples=[999])
    reset: Instant | None = Field(description="when the window is full again")
    window: Literal["hour", "minute"]


class RateLimit(_Answer):
    """The key's rate limit. `limit`, `remaining` and `reset` are the tier's hourly window (its only window,
    for a tier that has one); `burst` is the per-minute window beside it (null without one). Every field but
    `tier` is null or absent for an unlimited tier. Both windows are enforced; the answer's `X-RateLimit-*`
    headers describe whichever has fewer requests left."""

    limit: int | None = Field(description="requests the window allows (null: unlimited)", examples=[1000])
    remaining: int | None = Field(description="requests left in it now", examples=[999])
    reset: Instant | None = Field(description="when the window is full again")
    window: Literal["hour", "minute"] = _optional()
    tier: str = Field(examples=["standard"])
    burst: Window | None = _optional("the per-minute window beside the hourly one (null: none)")


class KeyRotationState(_Answer):
    """Whether the key is due for rotation, or rotated and in its grace period."""

    status: RotationStatus
    rotation_due_at: Instant | None
    replaced_by: str | None


class AuthTest(_Answer):
    """Who is calling: an API key (its id, name, environment and rotation state) or a dashboard JWT (its
    subject), its scopes, expiry and rate limit."""

    authenticated: bool
    key_id: str | None = Field(description="the calling key's id (null for a JWT)")
    name: str = _optional("the key's name (API keys only)")
    subject: str = _optional("the JWT's subject (JWTs only)")
    permissions: list[str]
    credential: Literal["jwt"] = _optional("`jwt` for a JWT (absent for an API key)")
    environment: Environment = _optional()
    expires_at: Instant | None
    rotation: KeyRotationState = _optional()
    rate_limit: RateLimit | None = Field(description="null when rate limits are off")


class ErrorDetail(_Answer):
    """What was refused and why."""

    code: str = Field(examples=["invalid_token"])
    message: str
    status: int
    field: str = _optional("the request field at fault, for `validation_error` (`body` for the body as a whole)")


class Error(_Answer):
    """A refusal in the deployERP format."""

    error: ErrorDetail


class AllyErrorDetail(_Answer):
    """What was refused and why."""

    code: str = Field(examples=["UNAUTHORIZED"])
    message: str
    field: str = _optional("the request field at fault, for `VALIDATION_ERROR` (`body` for the body as a whole)")


class AllyError(_Answer):
    """A refusal in the DeployAlly format."""

    success: Literal[False]
    error: AllyErrorDetail


# --- the models of one configuration --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyModels:
    """The key models of one configuration: ``rate_limit_tier`` takes only its tiers, and answers name the
    allowlist as its error format does."""

    create: type[KeyCreate]
    update: type[KeyUpdate]
    key: type[ApiKey]
    created: type[KeyCreated]
    page: type[KeyPage]


def ip_field(error_format: str) -> str:
    """The allowlist's name in answers: DeployAlly's ``allowed_ips`` or deployERP's ``ip_whitelist``."""
    return "allowed_ips" if error_format == "deployally" else "ip_whitelist"


def _variant(base: type[BaseModel], **fields: Any) -> Any:
    """``base`` with ``fields`` replaced: same name (the one the OpenAPI document shows), same docstring."""
    return create_model(base.__name__, __base__=base, __module__=__name__, __doc__=base.__doc__, **fields)


@functools.cache
def key_models(tiers: tuple[str, ...], ip_name: str = "ip_whitelist") -> KeyModels:
    """The models of a configuration whose tiers are ``tiers`` and whose answers call the allowlist
    ``ip_name``. Built once per configuration."""
    tier: Any = Literal.__getitem__(tiers)
    tier_field = (tier | None, Field(None, description="null: the default tier"))
    ips = (list[str], Field(serialization_alias=ip_name,
                            description="IP addresses or CIDR networks the key may be used from"))
    key = _variant(ApiKey, allowed_ips=ips)
    return KeyModels(
        create=_variant(KeyCreate, rate_limit_tier=tier_field),
        update=_variant(KeyUpdate, rate_limit_tier=tier_field),
        key=key,
        created=_variant(KeyCreated, allowed_ips=ips),
        page=_variant(KeyPage, data=(list[key], ...)),  # type: ignore[valid-type]
    )


def models_for(settings: Settings) -> KeyModels:
    return key_models(tuple(settings.rate_limits.tiers), ip_field(settings.error_format))


# --- validation errors, as the API and the CLI report them ------------------------------------------------------


class Problem(NamedTuple):
    """The first thing wrong with a request: the field as documented (``body`` for the body as a whole),
    where in it (``permissions[1]``) and what is wrong: a ``validation_error.*`` message of the catalogues
    (gateway/messages/) and its values, none of them the value sent. The API answers it in the language of its
    error format; :attr:`message` and :attr:`text` are the English words (the CLI's)."""

    field: str
    where: str
    message_id: str
    params: Mapping[str, object] = MappingProxyType({})

    @property
    def values(self) -> dict[str, object]:
        """Every value of the message, ``where`` included."""
        return {**self.params, "where": self.where}

    @property
    def message(self) -> str:
        return english(self.message_id, self.values)

    @property
    def text(self) -> str:
        """The English words without the field."""
        return problem_text(self.message_id, self.where, self.params)


# pydantic's error types -> the catalogue's messages; their values come from pydantic's context (the limits the
# model declares), never from the input.
_PROBLEMS = {
    "missing": "validation_error.missing",
    "string_type": "validation_error.string_type",
    "bool_type": "validation_error.bool_type",
    "list_type": "validation_error.list_type",
    "int_type": "validation_error.int_type",
    "int_parsing": "validation_error.int_type",
    "int_from_float": "validation_error.int_type",
    "string_too_short": "validation_error.string_too_short",
    "string_too_long": "validation_error.string_too_long",
    "too_short": "validation_error.too_short",
    "too_long": "validation_error.too_long",
    "greater_than_equal": "validation_error.greater_than_equal",
    "less_than_equal": "validation_error.less_than_equal",
    "literal_error": "validation_error.literal_error",
    "enum": "validation_error.literal_error",
}
_CONTEXT = ("max_length", "min_length", "ge", "le")


def _expected(ctx: Mapping[str, Any]) -> str:
    """The values a literal may take, listed without pydantic's English ``or`` (``'live' or 'test'``)."""
    return ", ".join(re.findall(r"'([^']*)'", str(ctx.get("expected", "")))) or "?"


def problem(exc: ValidationError, model: type[BaseModel], unknown: str = "validation_error.extra_forbidden") -> Problem:
    """The :class:`Problem` of the first error pydantic found validating ``model``. ``unknown`` is the message
    for a name the model does not have (a field; ``validation_error.unknown_query`` for a query parameter)."""
    err = exc.errors(include_url=False)[0]
    loc, kind, ctx = err["loc"], err["type"], err.get("ctx") or {}
    if not loc:
        if kind == "json_invalid":
            return Problem("body", "body", "validation_error.json_invalid")
        if kind == "model_type":
            return Problem("body", "body", "validation_error.not_object")
        field = str(ctx.get("field", "body"))
        return Problem(field, field, "validation_error.invalid")
    spelled = {str(c): public_name(model, name) for name, info in model.model_fields.items()
               if isinstance(info.validation_alias, AliasChoices) for c in info.validation_alias.choices}
    field = spelled.get(str(loc[0]), str(loc[0]))
    where = field + "".join(f"[{p}]" for p in loc[1:] if isinstance(p, int))
    params: dict[str, object] = {}
    if kind == "extra_forbidden":
        if str(loc[0]) in spelled:
            first, *others = (s for s, f in spelled.items() if f == field)
            return Problem(field, field, "validation_error.both_spellings",
                           {"first": first, "second": " / ".join(others)})
        return Problem(field, where, unknown)
    if kind == "string_pattern_mismatch":
        message_id = _PATTERN_PROBLEMS.get(str(ctx.get("pattern")), "validation_error.pattern")
    elif kind.startswith(("datetime", "date_")):
        message_id = "validation_error.datetime"
    elif kind in _PROBLEMS:
        message_id = _PROBLEMS[kind]
        params = {k: ctx[k] for k in _CONTEXT if k in ctx}
        if message_id == "validation_error.literal_error":
            params["expected"] = _expected(ctx)
    elif isinstance(ctx.get("error"), Refused):
        refused: Refused = ctx["error"]  # our own validators' words (networks, durations)
        message_id, params = refused.message_id, dict(refused.params)
    else:
        message_id = "validation_error.invalid"
    if kind == "too_short" and field == "permissions":
        message_id, params = "validation_error.permissions_empty", {}
    return Problem(field, where, message_id, params)
