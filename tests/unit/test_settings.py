"""gateway/config/settings.py: defaults < YAML file < GATEWAY_* environment < CLI overrides, and every bad value
refused with a message that starts with the setting's name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.settings import (
    ConfigError,
    KeyFormat,
    Settings,
    load_settings,
    resolve_path,
    sqlite_path,
)


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def refused(field: str, *, text: str | None = None, env: dict[str, str] | None = None, tmp_path: Path | None = None,
            overrides: dict[str, object] | None = None) -> str:
    """Load and expect a ConfigError whose message starts with ``field``; return the message."""
    path = write(tmp_path, text) if text is not None and tmp_path is not None else None
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ=env or {}, overrides=overrides)
    message = str(info.value)
    assert message.startswith(f"{field}: "), message
    assert "Traceback" not in message
    return message


# --- defaults, file, environment, precedence -------------------------------------------------------------------


def test_defaults() -> None:
    s = load_settings(None, environ={})
    assert s == Settings()
    assert (s.listen.host, s.listen.port) == ("127.0.0.1", 8080)
    assert s.upstream.url == "http://127.0.0.1:9000"
    assert s.store.url == "sqlite:///data/keys.db"
    assert s.cache.ttl_seconds == 5.0
    assert s.policies == "policies/deployerp.yaml"
    assert s.error_format == "deployerp"
    assert s.key_format == KeyFormat(live="dep_live_", test="dep_test_")
    assert s.debug_headers is True
    assert s.trusted_proxies == ()
    assert s.forward_authorization is False
    assert s.secret is None and s.secret_file is None
    assert s.management.allow_jwt is False  # the key-management API takes API keys only
    assert s.base_dir == "."


def test_a_missing_file_gives_defaults_unless_required(tmp_path: Path) -> None:
    assert load_settings(tmp_path / "absent.yaml", environ={}) == Settings()
    with pytest.raises(ConfigError, match=r"absent\.yaml: configuration file not found"):
        load_settings(tmp_path / "absent.yaml", environ={}, required=True)


def test_an_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "# nothing here\n"), environ={}) == Settings()


def test_the_shipped_config_yaml_loads() -> None:
    shipped = Path(__file__).resolve().parents[2] / "config.yaml"
    s = load_settings(shipped, environ={}, required=True)
    assert s.listen.port == 8080 and s.error_format == "deployerp"
    assert s.base_dir == str(shipped.parent)


def test_yaml_file_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
listen: {host: 0.0.0.0, port: 9999}
upstream: {url: "https://api.example.com:8443", connect_timeout: 1.5, read_timeout: 30}
store: {url: "sqlite:///state/keys.db"}
cache: {ttl_seconds: 0.5}
policies: my-policy.yaml
error_format: deployally
key_format: deployally
debug_headers: false
trusted_proxies: [10.0.0.0/8, "2001:db8::/32", 192.0.2.1]
forward_authorization: true
""",
    )
    s = load_settings(path, environ={})
    assert (s.listen.host, s.listen.port) == ("0.0.0.0", 9999)
    assert s.upstream.url == "https://api.example.com:8443"
    assert (s.upstream.connect_timeout, s.upstream.read_timeout) == (1.5, 30.0)
    assert s.cache.ttl_seconds == 0.5
    assert s.policies == "my-policy.yaml"
    assert s.error_format == "deployally"
    assert s.key_format == KeyFormat(live="da_", test="da_test_")
    assert s.debug_headers is False and s.forward_authorization is True
    assert s.trusted_proxies == ("10.0.0.0/8", "2001:db8::/32", "192.0.2.1")
    assert s.base_dir == str(tmp_path)


def test_environment_overrides_sections_and_top_level_fields() -> None:
    env = {
        "GATEWAY_UPSTREAM__URL": "http://10.1.2.3:7000",
        "GATEWAY_LISTEN__PORT": "18080",
        "GATEWAY_CACHE__TTL_SECONDS": "2.5",
        "GATEWAY_ERROR_FORMAT": "deployally",
        "GATEWAY_KEY_FORMAT": "deployally",
        "GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.0.0/16",
        "GATEWAY_DEBUG_HEADERS": "false",
        "GATEWAY_FORWARD_AUTHORIZATION": "YES",
        "GATEWAY_POLICIES": "policies/deployally.yaml",
        "GATEWAY_MANAGEMENT__ALLOW_JWT": "true",
        "GATEWAY_URL": "https://not-ours.example",  # another tool's variable: ignored
        "OTHER_LISTEN__PORT": "1",
    }
    s = load_settings(None, environ=env)
    assert s.upstream.url == "http://10.1.2.3:7000"
    assert s.listen.port == 18080
    assert s.cache.ttl_seconds == 2.5
    assert s.error_format == "deployally"
    assert s.key_format == KeyFormat(live="da_", test="da_test_")
    assert s.trusted_proxies == ("10.0.0.0/8", "192.168.0.0/16")
    assert s.debug_headers is False and s.forward_authorization is True
    assert s.policies == "policies/deployally.yaml"
    assert s.management.allow_jwt is True


def test_precedence_defaults_file_environment_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "listen: {host: 10.9.9.9, port: 1111}\ncache: {ttl_seconds: 7}\nerror_format: deployally\n")
    s = load_settings(path, environ={"GATEWAY_LISTEN__PORT": "2222", "GATEWAY_ERROR_FORMAT": "deployerp"})
    assert s.listen.host == "10.9.9.9"  # file (the environment names only the port)
    assert s.listen.port == 2222  # environment beats file
    assert s.cache.ttl_seconds == 7.0  # file beats default
    assert s.cache.max_size == 100_000  # default kept beside a file value in the same section
    assert s.error_format == "deployerp"
    s = load_settings(path, environ={"GATEWAY_LISTEN__PORT": "2222"}, overrides={"listen": {"port": 3333}})
    assert s.listen.port == 3333 and s.listen.host == "10.9.9.9"  # CLI flags beat everything


def test_key_format_presets_and_mappings(tmp_path: Path) -> None:
    assert load_settings(None, environ={"GATEWAY_KEY_FORMAT": "deployerp"}).key_format == KeyFormat()
    s = load_settings(write(tmp_path, "key_format: {live: acme_, test: acme_test_}\n"), environ={})
    assert s.key_format == KeyFormat(live="acme_", test="acme_test_")
    s = load_settings(None, environ={"GATEWAY_KEY_FORMAT__TEST": "sandbox_"})
    assert s.key_format == KeyFormat(live="dep_live_", test="sandbox_")
    # A preset in the file, one field changed from the environment.
    s = load_settings(write(tmp_path, "key_format: deployally\n"), environ={"GATEWAY_KEY_FORMAT__TEST": "da_dev_"})
    assert s.key_format == KeyFormat(live="da_", test="da_dev_")
    refused("key_format", env={"GATEWAY_KEY_FORMAT": "stripe"})
    refused("key_format", env={"GATEWAY_KEY_FORMAT__LIVE": "dep_test_"})  # live and test must differ
    refused("key_format.live", env={"GATEWAY_KEY_FORMAT__LIVE": "deplive"})  # must end with "_"
    refused("key_format.test", env={"GATEWAY_KEY_FORMAT__TEST": "dép_"})
    refused("key_format.test", env={"GATEWAY_KEY_FORMAT__TEST": "a-b_"})
    refused("key_format.unknown", env={"GATEWAY_KEY_FORMAT__UNKNOWN": "x_"})


def test_environment_results_do_not_depend_on_variable_order() -> None:
    pairs = [("GATEWAY_KEY_FORMAT", "deployally"), ("GATEWAY_KEY_FORMAT__TEST", "da_dev_")]
    for env in (dict(pairs), dict(reversed(pairs))):
        # A preset for the section and one field of it changed: both orders mean the same.
        assert load_settings(None, environ=env).key_format == KeyFormat(live="da_", test="da_dev_")
    pairs = [("GATEWAY_LISTEN__PORT", "2"), ("GATEWAY_LISTEN__PORT__X", "1")]
    for env in (dict(pairs), dict(reversed(pairs))):
        refused("GATEWAY_LISTEN__PORT__X", env=env)  # a field and a sub-field of it: always a conflict


def test_malformed_environment_variable_names() -> None:
    assert "malformed variable name" in refused("GATEWAY_LISTEN__", env={"GATEWAY_LISTEN__": "1"})
    assert "malformed variable name" in refused("GATEWAY_LISTEN____PORT", env={"GATEWAY_LISTEN____PORT": "1"})
    refused("listen.port", env={"GATEWAY_LISTEN__PORT__X": "1"})


def test_relative_paths_resolve_against_the_config_files_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    conf = tmp_path / "etc" / "gateway"
    conf.mkdir(parents=True)
    path = write(conf, "store: {url: 'sqlite:///data/keys.db'}\npolicies: rules/policy.yaml\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter
    s = load_settings(path, environ={})
    assert sqlite_path(s) == conf / "data" / "keys.db"
    assert resolve_path(s, s.policies) == conf / "rules" / "policy.yaml"
    assert resolve_path(s, "/abs/policy.yaml") == Path("/abs/policy.yaml")
    assert resolve_path(s, "~/p.yaml") == Path.home() / "p.yaml"
    s = load_settings(write(conf, "store: {url: 'sqlite:////var/lib/gw/keys.db'}\n", "abs.yaml"), environ={})
    assert sqlite_path(s) == Path("/var/lib/gw/keys.db")
    # A relative config path is resolved once, when loaded.
    s = load_settings(Path("..") / "etc" / "gateway" / "config.yaml", environ={})
    assert Path(s.base_dir) == conf


# --- errors ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["0", "65536", "-1", "100000"])
def test_port_out_of_range(port: str) -> None:
    message = refused("listen.port", env={"GATEWAY_LISTEN__PORT": port})
    assert "between 1 and 65535" in message


@pytest.mark.parametrize("value", ["abc", "80.5", "", "0x50", "8080 tcp"])
def test_port_not_an_integer_from_the_environment(value: str) -> None:
    assert "must be an integer" in refused("listen.port", env={"GATEWAY_LISTEN__PORT": value})


@pytest.mark.parametrize("text", ["listen: {port: 80.5}\n", "listen: {port: true}\n", "listen: {port: [80]}\n",
                                  "listen: {port: abc}\n"])
def test_port_not_an_integer_in_the_file(tmp_path: Path, text: str) -> None:
    assert "must be an integer" in refused("listen.port", text=text, tmp_path=tmp_path)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com",
        "example.com",
        "127.0.0.1:9000",
        "http://",
        "http:///path",
        "http://host:99999",
        "http://host:abc",
        "http://host:-1",
        "http://exa mple.com",
        "http://host/\x00",
        "http://host/?x=1",
        "http://host/#frag",
        "",
    ],
)
def test_bad_upstream_url(url: str) -> None:
    refused("upstream.url", env={"GATEWAY_UPSTREAM__URL": url})


@pytest.mark.parametrize("url", ["http://127.0.0.1:9000", "https://api.example.com", "http://[::1]:8080/base",
                                 "http://host:1", "http://host:65535/"])
def test_good_upstream_urls(url: str) -> None:
    assert load_settings(None, environ={"GATEWAY_UPSTREAM__URL": url}).upstream.url == url


def test_bad_error_format() -> None:
    message = refused("error_format", env={"GATEWAY_ERROR_FORMAT": "json"})
    assert "deployerp" in message and "deployally" in message and "'json'" in message


def test_unknown_settings_are_named(tmp_path: Path) -> None:
    assert "unknown setting" in refused("lisen", text="lisen: {port: 1}\n", tmp_path=tmp_path)
    message = refused("listen.prot", text="listen: {prot: 1}\n", tmp_path=tmp_path)
    assert "known: " in message and "port" in message
    refused("listen.bogus", env={"GATEWAY_LISTEN__BOGUS": "1"})
    refused("upstream.environments.prod", text="upstream: {environments: {prod: 'http://x'}}\n", tmp_path=tmp_path)


def test_bad_cidr_in_trusted_proxies_names_the_entry(tmp_path: Path) -> None:
    message = refused("trusted_proxies[1]", env={"GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8,10.0.0.0/33"})
    assert "'10.0.0.0/33'" in message
    refused("trusted_proxies[0]", text="trusted_proxies: [example.com]\n", tmp_path=tmp_path)
    refused("trusted_proxies", text="trusted_proxies: {a: 1}\n", tmp_path=tmp_path)


def test_bad_yaml_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "listen:\n  host: 127.0.0.1\n  port: [8080\nerror_format: deployerp\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    message = str(info.value)
    assert message.startswith(f"{path}: not valid YAML")
    line = int(re.search(r"line (\d+)", message).group(1))  # type: ignore[union-attr]
    assert 3 <= line <= 4


def test_tabs_and_unreadable_files(tmp_path: Path) -> None:
    path = write(tmp_path, "listen:\n\tport: 1\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: not valid YAML \(line 2"):
        load_settings(path, environ={})
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"listen: {host: caf\xe9}\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(latin))}: cannot read"):
        load_settings(latin, environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path, environ={})  # a directory


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_the_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: the top level must be a mapping"):
        load_settings(path, environ={})


def test_a_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    assert "must be a mapping" in refused("listen", text="listen: 8080\n", tmp_path=tmp_path)
    assert "must be a mapping" in refused("cache", env={"GATEWAY_CACHE": "big"})


@pytest.mark.parametrize("value", ["maybe", "2", "", "tru", "on off"])
def test_bad_booleans(value: str) -> None:
    message = refused("debug_headers", env={"GATEWAY_DEBUG_HEADERS": value})
    assert "must be true or false" in message


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("1", True), ("yes", True), ("ON", True),
                                                 ("false", False), ("0", False), ("no", False), ("Off", False)])
def test_good_booleans(value: str, expected: bool) -> None:
    assert load_settings(None, environ={"GATEWAY_FORWARD_AUTHORIZATION": value}).forward_authorization is expected


def test_boolean_in_the_file_must_be_a_boolean(tmp_path: Path) -> None:
    refused("debug_headers", text="debug_headers: 1.5\n", tmp_path=tmp_path)
    refused("forward_authorization", text="forward_authorization: [true]\n", tmp_path=tmp_path)


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999"])
def test_non_finite_numbers_are_refused(value: str) -> None:
    refused("cache.ttl_seconds", env={"GATEWAY_CACHE__TTL_SECONDS": value})
    refused("upstream.read_timeout", env={"GATEWAY_UPSTREAM__READ_TIMEOUT": value})


def test_non_finite_numbers_in_the_file_are_refused(tmp_path: Path) -> None:
    refused("upstream.connect_timeout", text="upstream: {connect_timeout: .nan}\n", tmp_path=tmp_path)
    refused("cache.ttl_seconds", text="cache: {ttl_seconds: .inf}\n", tmp_path=tmp_path)


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"GATEWAY_CACHE__TTL_SECONDS": "-1"}, "cache.ttl_seconds"),
        ({"GATEWAY_CACHE__TTL_SECONDS": "five"}, "cache.ttl_seconds"),
        ({"GATEWAY_CACHE__MAX_SIZE": "0"}, "cache.max_size"),
        ({"GATEWAY_UPSTREAM__CONNECT_TIMEOUT": "0"}, "upstream.connect_timeout"),
        ({"GATEWAY_UPSTREAM__READ_TIMEOUT": "-5"}, "upstream.read_timeout"),
        ({"GATEWAY_STORE__URL": "mysql://db/keys"}, "store.url"),
        ({"GATEWAY_STORE__URL": "sqlite://keys.db"}, "store.url"),
        ({"GATEWAY_LISTEN__HOST": ""}, "listen.host"),
        ({"GATEWAY_SECRET": "short"}, "secret"),
        ({"GATEWAY_MANAGEMENT__PREFIX": "v1"}, "management.prefix"),
        ({"GATEWAY_UPSTREAM__ENVIRONMENTS__TEST": "gopher://x"}, "upstream.environments.test"),
    ],
)
def test_other_bad_values_name_their_field(env: dict[str, str], field: str) -> None:
    refused(field, env=env)


def test_secret_values_never_appear_in_error_messages(tmp_path: Path) -> None:
    refused("secret", text="secret: {value: do-not-print-me-0123456789}\n", tmp_path=tmp_path)
    message = refused("secret", env={"GATEWAY_SECRET": "tiny-secret"})
    assert "tiny-secret" not in message
    message = refused("secret", text="secret: [do-not-print-me-0123456789]\n", tmp_path=tmp_path)
    assert "do-not-print-me" not in message


def test_tier_faster_than_one_request_per_microsecond_is_refused_naming_the_field() -> None:
    # Such a tier made the GCRA emission interval 0 and the limiter raised ZeroDivisionError per request.
    from gateway.config.settings import ConfigError, load_settings

    env = {"GATEWAY_RATE_LIMITS__TIERS__FAST__PER_MINUTE": "60000001"}
    try:
        load_settings(None, environ=env)
    except ConfigError as exc:
        assert "rate_limits.tiers.fast.per_minute" in str(exc)
    else:
        raise AssertionError("a per_minute above 60,000,000 was accepted")
    assert load_settings(None, environ={"GATEWAY_RATE_LIMITS__TIERS__FAST__PER_MINUTE": "60000000"})


# --- Redis Sentinel and Cluster URLs (gateway/redisurl.py) -----------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://:pw@redis.internal:6380/2",
        "unix:///run/redis.sock?db=1",
        "redis+sentinel://127.0.0.1:26379/mymaster",
        "redis+sentinel://:pw@s1:26379,s2,[::1]:26380/mymaster/3",
        "rediss+sentinel://user:pw@s1/mymaster/0?sentinel_password=spw&sentinel_username=su",
        "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
        "redis+cluster://:pw@node1/",
        "rediss+cluster://user:pw@node1:7000,node2:7000/0",
    ],
)
def test_redis_urls_of_every_topology_are_accepted(url: str) -> None:
    s = load_settings(None, environ={"GATEWAY_STORE__URL": url, "GATEWAY_RATE_LIMITS__URL": url})
    assert s.store.url == url and s.rate_limits.url == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://host/x", "unsupported scheme 'ftp'"),
        ("redis+sentinal://h:26379/m", "unsupported scheme 'redis+sentinal'"),
        ("redis+sentinel:///mymaster", "no hosts"),
        ("redis+cluster://", "no hosts"),
        ("redis+sentinel://h1:26379,,h2/m", "an empty entry"),
        ("redis+sentinel://h1:notaport/m", "bad port 'notaport' for host 'h1'"),
        ("redis+cluster://h1:7000,h2:70000", "bad port '70000' for host 'h2'"),
        ("redis+cluster://:7000", "a port without a host"),
        ("redis+sentinel://h1:26379", "missing the Sentinel service name"),
        ("redis+sentinel://h1:26379/", "missing the Sentinel service name"),
        ("redis+sentinel://h1/m/x", "the database must be a number (got 'x')"),
        ("redis+sentinel://h1/m/0/extra", "too many path segments"),
        ("redis+cluster://h1:7000/1", "Redis Cluster has only database 0"),
        ("redis+cluster://h1:7000?ssl_cert_reqs=none", "unknown option 'ssl_cert_reqs'"),
        ("redis+sentinel://h1/m?db=2", "unknown option 'db'"),
        ("redis://h1:7000,h2:7001/0", "use redis+sentinel:// or redis+cluster://"),
        ("redis://h1:99999/0", "bad port"),
        ("redis://h1:6379/zero", "the database must be a number"),
        ("unix://", "needs a path"),
    ],
)
def test_bad_redis_urls_are_refused_naming_the_problem(url: str, problem: str) -> None:
    for field, var in (("store.url", "GATEWAY_STORE__URL"), ("rate_limits.url", "GATEWAY_RATE_LIMITS__URL")):
        message = refused(field, env={var: url})
        assert problem in message, message


def test_redis_url_errors_never_show_a_password() -> None:
    for url in ("redis+sentinel://:hunter2-secret@h1:bad/m", "redis+cluster://u:hunter2-secret@h1:7000/5",
                "redis+sentinel://h1/m?sentinel_password=hunter2-secret&x=1", "hunter2-secret@h1:6379",
                "redis+sentinel://:hunter2-secret@/m"):
        message = refused("store.url", env={"GATEWAY_STORE__URL": url})
        assert "hunter2" not in message, message


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql://u:hunter2-secret@/keys", "names its server"),
        ("postgres://u:hunter2-secret@db:5432", "names its database"),
        ("postgresql://u:hunter2-secret@db:99999/keys", "not a usable PostgreSQL URL"),
        ("postgresql://u:hunter2-secret@db/keys?sslmode=maybe", "sslmode must be one of"),
    ],
)
def test_bad_postgres_urls_are_refused_naming_the_problem_never_the_password(url: str, problem: str) -> None:
    message = refused("store.url", env={"GATEWAY_STORE__URL": url})
    assert problem in message and "hunter2" not in message, message


def test_postgres_urls_are_accepted_with_tls_options() -> None:
    for url in ("postgresql://gw:pw@db.internal:5432/keys", "postgres://db/keys?sslmode=verify-full&sslrootcert=ca.pem",
                "postgresql:///keys?host=/var/run/postgresql"):
        assert load_settings(None, environ={"GATEWAY_STORE__URL": url}).store.url == url


def test_redacted_hides_every_password() -> None:
    from gateway.redisurl import parse, redacted

    assert redacted("redis+sentinel://:pw1@h1,h2/m/0?sentinel_password=pw2") == (
        "redis+sentinel://:***@h1,h2/m/0?sentinel_password=***")
    assert redacted("redis://user:pw@h:6379/0") == "redis://user:***@h:6379/0"
    assert redacted("redis+cluster://h1:7000,h2:7001") == "redis+cluster://h1:7000,h2:7001"
    assert "pw" not in repr(parse("redis+cluster://u:pw@h1"))


def test_rate_limits_follow_a_sentinel_or_cluster_store() -> None:
    from gateway.ratelimit.stage import limiter_url

    for url in ("redis+sentinel://h1/m/0", "redis+cluster://h1:7000"):
        assert limiter_url(load_settings(None, environ={"GATEWAY_STORE__URL": url})) == url
    assert limiter_url(load_settings(None, environ={})) == "memory://"


# --- forward_auth ---------------------------------------------------------------------------------------------


def test_forward_auth_defaults_and_environment() -> None:
    fa = Settings().forward_auth
    assert (fa.enabled, fa.path, fa.test_keys) == (True, "/_gateway/verify", False)
    env = {"GATEWAY_FORWARD_AUTH__PATH": "/auth/check", "GATEWAY_FORWARD_AUTH__ENABLED": "false",
           "GATEWAY_FORWARD_AUTH__TEST_KEYS": "yes"}
    s = load_settings(None, environ=env)
    assert (s.forward_auth.enabled, s.forward_auth.path, s.forward_auth.test_keys) == (False, "/auth/check", True)


@pytest.mark.parametrize("path", ["verify", "/_gateway/verify/", "/", "/a b", "/a?b", "/v%31", "/vérifier", ""])
def test_forward_auth_path_must_be_a_plain_path(path: str) -> None:
    refused("forward_auth.path", env={"GATEWAY_FORWARD_AUTH__PATH": path})


def test_forward_auth_path_must_not_take_a_probe_or_hide_the_key_api() -> None:
    assert "ops.metrics_path" in refused("forward_auth.path", env={"GATEWAY_FORWARD_AUTH__PATH": "/metrics"})
    # Every path below forward_auth.path is the endpoint's (Envoy's path_prefix form).
    for prefix in ("/v1", "/v1/keys"):
        env = {"GATEWAY_FORWARD_AUTH__PATH": "/v1", "GATEWAY_MANAGEMENT__PREFIX": prefix}
        assert "management API" in refused("forward_auth.path", env=env)
    # ... unless the endpoint is off, or the key API is elsewhere.
    load_settings(None, environ={"GATEWAY_FORWARD_AUTH__PATH": "/v1", "GATEWAY_FORWARD_AUTH__ENABLED": "false"})
    load_settings(None, environ={"GATEWAY_FORWARD_AUTH__PATH": "/v1/verify"})


# --- every problem at once -------------------------------------------------------------------------------------


def test_every_problem_in_a_file_is_named_at_once(tmp_path: Path) -> None:
    """Three mistakes in three sections: one ConfigError naming all three, one ``path: why`` line each."""
    path = write(tmp_path, "listen: {port: 70000}\nstore: {url: 'ftp://x'}\nrate_limits: {on_store_error: maybe}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    problems = info.value.problems
    assert [p.split(": ", 1)[0] for p in problems] == ["listen.port", "store.url", "rate_limits.on_store_error"]
    assert str(info.value).splitlines() == list(problems)
    assert "between 1 and 65535" in problems[0] and "70000" in problems[0]
    assert "unsupported scheme 'ftp'" in problems[1]
    assert "deny, allow, local" in problems[2] and "'maybe'" in problems[2]


def test_problems_in_one_section_and_nested_mappings_are_all_named(tmp_path: Path) -> None:
    path = write(tmp_path, """
listen: {port: 0, workers: 65, prot: 1}
rate_limits:
  tiers:
    gold: {per_hour: 0, per_minute: 10}
    bad name: {per_hour: 5}
limits: {max_headers: 1, body_bytes_per_route: {v1/x: 10, /v1/y: -1}}
trusted_proxies: [10.0.0.0/8, nonsense, 10.0.0.0/40]
""")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    named = {p.split(": ", 1)[0] for p in info.value.problems}
    assert named == {"listen.port", "listen.workers", "listen.prot", "rate_limits.tiers.gold.per_hour",
                     "rate_limits.tiers.bad name", "limits.max_headers", "limits.body_bytes_per_route.v1/x",
                     "limits.body_bytes_per_route./v1/y", "trusted_proxies[1]", "trusted_proxies[2]"}, named
    assert len(info.value.problems) == len(named)


def test_environment_and_file_problems_together_and_the_variable_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "cache: {ttl_seconds: -1}\n")
    env = {"GATEWAY_LISTEN__PORT": "70000", "GATEWAY_LISTEN__": "1", "GATEWAY_OPS__LOG_FORMAT": "xml"}
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ=env)
    problems = info.value.problems
    assert problems[0].startswith("GATEWAY_LISTEN__: malformed variable name")
    by_path = {p.split(": ", 1)[0]: p for p in problems[1:]}
    assert set(by_path) == {"listen.port", "cache.ttl_seconds", "ops.log_format"}
    assert "GATEWAY_LISTEN__PORT" in by_path["listen.port"]  # the value came from the environment: say where
    assert "GATEWAY_OPS__LOG_FORMAT" in by_path["ops.log_format"]
    assert "GATEWAY_" not in by_path["cache.ttl_seconds"]  # this one is the file's


def test_a_secret_in_a_bad_field_never_appears(tmp_path: Path) -> None:
    secret = "tiny-secret"
    jwt_secret = "jwt-secret-value-0123456789"
    path = write(tmp_path, f"jwt: {{secret: [{jwt_secret}], algorithms: HS256}}\nlisten: {{port: 0}}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={"GATEWAY_SECRET": secret})
    message = str(info.value)
    named = {p.split(": ", 1)[0] for p in info.value.problems}
    assert named == {"secret", "jwt.secret", "listen.port"}, message
    assert secret not in message and jwt_secret not in message
    assert secret not in repr(info.value) and jwt_secret not in repr(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no pydantic error chained on


def test_secrets_stay_out_of_repr() -> None:
    env = {"GATEWAY_SECRET": "pepper-0123456789-abcdef", "GATEWAY_JWT__SECRET": "jwt-0123456789"}
    s = load_settings(None, environ=env)
    assert s.secret == "pepper-0123456789-abcdef" and s.jwt.secret == "jwt-0123456789"
    for text in (repr(s), str(s), repr(s.jwt), str(s.jwt)):
        assert "pepper-0123456789" not in text and "jwt-0123456789" not in text


def test_config_error_carries_its_problems() -> None:
    one = ConfigError("secret_file: /x does not exist")
    assert one.problems == ("secret_file: /x does not exist",) and str(one) == "secret_file: /x does not exist"
    two = ConfigError("a: x", "b: y")
    assert two.problems == ("a: x", "b: y") and str(two) == "a: x\nb: y"


def test_settings_are_immutable_and_copied_with_changes() -> None:
    s = load_settings(None, environ={})
    with pytest.raises((TypeError, ValueError)):
        s.listen.port = 1  # type: ignore[misc]
    with pytest.raises((TypeError, ValueError)):
        s.policies = "x"  # type: ignore[misc]
    t = s.model_copy(update={"base_dir": "/etc/gateway", "secret_file": "pepper"})
    assert (t.base_dir, t.secret_file, s.base_dir, s.secret_file) == ("/etc/gateway", "pepper", ".", None)
    assert t.model_copy(update={"secret_file": None}) == s  # base_dir is where the file was, not a setting


def test_base_dir_is_not_a_setting(tmp_path: Path) -> None:
    refused("base_dir", text="base_dir: /tmp\n", tmp_path=tmp_path)
    assert load_settings(None, environ={"GATEWAY_BASE_DIR": "/tmp"}).base_dir == "."


def test_upstream_url_errors_never_show_a_password() -> None:
    for url in ("ftp://user:hunter2-secret@host/", "http://user:hunter2-secret@host:99999/",
                "https://:hunter2-secret@/path"):
        for field, var in (("upstream.url", "GATEWAY_UPSTREAM__URL"),
                           ("upstream.environments.test", "GATEWAY_UPSTREAM__ENVIRONMENTS__TEST")):
            message = refused(field, env={var: url})
            assert "hunter2" not in message, message


def test_keys_that_are_not_names_are_unknown_settings(tmp_path: Path) -> None:
    assert "unknown setting" in refused("1", text="1: x\n", tmp_path=tmp_path)
    assert "unknown setting" in refused("listen.2", text="listen: {2: x}\n", tmp_path=tmp_path)
    assert "unknown setting" in refused("null", text="null: x\n", tmp_path=tmp_path)


_NAMES = st.sampled_from(["listen", "port", "url", "tiers", "gold", "per_hour", "secret", "key_format", "live",
                          "limits", "/v1/x", "ops", "healthz_path", "trusted_proxies", "jwt", "algorithms", "x"])
_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.sampled_from(
    ["deployally", "0", "http://h", "redis://h:1/0", "10.0.0.0/8", "/p", "7d", "nan", "true"])
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(_NAMES | st.integers(), inner, max_size=3), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(doc=st.dictionaries(_NAMES | st.sampled_from(["store", "rate_limits", "cache", "error_format"]) | st.integers(),
                           _VALUES, max_size=4),
       env=st.dictionaries(st.sampled_from(["GATEWAY_LISTEN__PORT", "GATEWAY_KEY_FORMAT", "GATEWAY_CACHE",
                                            "GATEWAY_RATE_LIMITS__TIERS__GOLD__PER_HOUR", "GATEWAY_LISTEN__PORT__X",
                                            "GATEWAY_TRUSTED_PROXIES", "GATEWAY_JWT__ALGORITHMS", "GATEWAY_X__"]),
                           st.text(max_size=6), max_size=3))
def test_any_document_loads_or_is_refused_with_a_config_error(tmp_path_factory: pytest.TempPathFactory,
                                                               doc: dict[object, object], env: dict[str, str]) -> None:
    """Whatever the file and the environment hold, the outcome is Settings or a ConfigError whose every line
    names a setting, a variable or the file: never another exception."""
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    try:
        load_settings(path, environ=env)
    except ConfigError as exc:
        assert exc.problems and all(": " in p and "Traceback" not in p for p in exc.problems), exc.problems


@pytest.mark.parametrize(
    "url",
    [
        "http://idp.example/.well-known/jwks.json",  # plain http off loopback: keys an attacker on the path could swap
        "http://10.0.0.5/jwks.json",
        "https://user:pw@idp.example/jwks.json",
        "ftp://idp.example/jwks.json",
        "https://idp.example/jwks.json?x=1",
        "idp.example/jwks.json",
    ],
)
def test_bad_jwks_url(url: str) -> None:
    refused("jwt.jwks_url", env={"GATEWAY_JWT__JWKS_URL": url})


@pytest.mark.parametrize("url", ["https://idp.example/.well-known/jwks.json", "http://127.0.0.1:8000/jwks",
                                 "http://localhost/jwks.json", "http://[::1]:9/k"])
def test_good_jwks_urls(url: str) -> None:
    assert load_settings(None, environ={"GATEWAY_JWT__JWKS_URL": url}).jwt.jwks_url == url


def test_jwks_refresh_floor_must_not_exceed_the_interval() -> None:
    refused("jwt.jwks_min_refresh_seconds", env={"GATEWAY_JWT__JWKS_REFRESH_SECONDS": "10",
                                                 "GATEWAY_JWT__JWKS_MIN_REFRESH_SECONDS": "60"})
    refused("jwt.jwks_timeout_seconds", env={"GATEWAY_JWT__JWKS_TIMEOUT_SECONDS": "0"})
    s = load_settings(None, environ={}).jwt
    assert (s.jwks_refresh_seconds, s.jwks_min_refresh_seconds, s.jwks_timeout_seconds) == (300, 30, 5)
