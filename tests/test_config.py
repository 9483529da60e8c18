"""Settings resolution: env -> config.toml -> default, with one clear line per bad value."""

import pytest

from opik_cipx.config import ConfigError, SentryDsn, load_settings, parse_sentry_dsn


def settings(tmp_path, toml: str | None = None, **env: str):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    if toml is not None:
        (home / "config.toml").write_text(toml)
    return load_settings({"CIPX_HOME": str(home), **env})


def test_defaults(tmp_path):
    s = settings(tmp_path)
    assert s.upstream_url == "https://api.anthropic.com"
    assert s.capture_content is True and s.disabled is False
    assert s.listen_host == "127.0.0.1"
    assert s.captures_max_mb == 512
    assert s.home == tmp_path / "home"


def test_env_beats_file_beats_default(tmp_path):
    toml = 'capture_content = false\nupstream_url = "https://corp-gateway.example"\n[captures]\nmax_mb = 64\n'
    s = settings(tmp_path, toml, CIPX_UPSTREAM_URL="https://other.example:8443")
    assert s.upstream_url == "https://other.example:8443"
    assert s.capture_content is False
    assert s.captures_max_mb == 64


def test_config_path_override_and_unknown_keys_warn(tmp_path):
    other = tmp_path / "elsewhere.toml"
    other.write_text("tee_queue_max = 7\nfuture_option = 1\n")
    s = settings(tmp_path, CIPX_CONFIG=str(other))
    assert s.tee_queue_max == 7
    assert s.warnings == (f"config file {other}: unknown key 'future_option' ignored",)


@pytest.mark.parametrize(
    "toml, env, fragment",
    [
        ("[captures]\nmax_mb = 'x'\n", {}, "key 'captures.max_mb': expected an integer"),
        ("drain_timeout_s = -1\n", {}, "key 'drain_timeout_s': must be at least 0"),
        ("capture_content = 'maybe'\n", {}, "key 'capture_content'"),
        ("", {"CIPX_CAPTURE_CONTENT": "perhaps"}, "environment variable CIPX_CAPTURE_CONTENT"),
        ("", {"CIPX_UPSTREAM_URL": "ftp://x"}, "environment variable CIPX_UPSTREAM_URL"),
        ("", {"CIPX_UPSTREAM_URL": "http://10.0.0.1"}, "only allowed to a loopback host"),
        ("", {"CIPX_UPSTREAM_PROXY": "socks5://p:1"}, "expected http://host:port"),
        ("a = = 1", {}, "is not valid TOML"),
    ],
)
def test_bad_values_name_the_source_and_key(tmp_path, toml, env, fragment):
    with pytest.raises(ConfigError) as err:
        settings(tmp_path, toml, **env)
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message
    if not env:
        assert str(tmp_path / "home" / "config.toml") in message


def test_a_tolerant_load_gives_bad_values_their_default_and_names_each(tmp_path):
    toml = "drain_timeout_s = -1\ntee_queue_max = 7\n[captures]\nmax_mb = 'x'\n"
    s = load_settings({"CIPX_HOME": str(_home(tmp_path, toml)), "CIPX_CAPTURE_CONTENT": "perhaps"}, tolerant=True)
    assert (s.drain_timeout_s, s.captures_max_mb, s.capture_content) == (30.0, 512, True)  # defaults
    assert s.tee_queue_max == 7  # good values are kept
    assert [key for key, _ in s.unusable] == ["capture_content", "drain_timeout_s", "captures.max_mb"]
    for key, line in s.unusable:
        assert "\n" not in line
        assert ("environment variable CIPX_CAPTURE_CONTENT" if key == "capture_content" else f"key '{key}'") in line
    with pytest.raises(ConfigError):  # the strict load still stops at the first
        settings(tmp_path, toml)


def test_a_tolerant_load_of_a_file_that_is_no_toml_keeps_the_environment(tmp_path):
    s = load_settings({"CIPX_HOME": str(_home(tmp_path, "a = = 1")), "CIPX_CAPTURES": "0"}, tolerant=True)
    assert s.captures_enabled is False and s.drain_timeout_s == 30.0
    ((key, line),) = s.unusable
    assert key == "" and "is not valid TOML" in line


def _home(tmp_path, toml: str):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(toml)
    return home


def test_http_upstream_allowed_to_loopback(tmp_path):
    assert settings(tmp_path, CIPX_UPSTREAM_URL="http://127.0.0.1:8080/").upstream_url == "http://127.0.0.1:8080"


def test_sentry_dsn_gives_the_envelope_endpoint_and_public_key():
    dsn = parse_sentry_dsn("https://abc123@o42.ingest.sentry.io/4507")
    assert dsn == SentryDsn("https://o42.ingest.sentry.io/api/4507/envelope/", "abc123", "o42.ingest.sentry.io")
    hosted = parse_sentry_dsn("https://k:legacy-secret@sentry.corp.example:9000/errors/7/")
    assert hosted.envelope_url == "https://sentry.corp.example:9000/errors/api/7/envelope/"
    assert hosted.public_key == "k" and "legacy-secret" not in repr(hosted)
    assert parse_sentry_dsn("http://k@127.0.0.1:8123/1").envelope_url == "http://127.0.0.1:8123/api/1/envelope/"


@pytest.mark.parametrize("dsn, fragment", [
    ("o42.ingest.sentry.io/1", "expected a Sentry DSN"),
    ("https://o42.ingest.sentry.io/1", "expected a Sentry DSN"),  # no public key
    ("https://k@o42.ingest.sentry.io/project", "project number"),
    ("https://k@o42.ingest.sentry.io/1?x=1", "project number"),
    ("http://k@sentry.corp.example/1", "only allowed to a loopback host"),
])
def test_bad_sentry_dsns_are_one_line_naming_the_variable(tmp_path, dsn, fragment):
    with pytest.raises(ConfigError) as err:
        settings(tmp_path, CIPX_SENTRY_DSN=dsn)
    assert "environment variable CIPX_SENTRY_DSN" in str(err.value) and fragment in str(err.value)


def test_telemetry_settings_from_the_file_and_the_off_switch(tmp_path):
    s = settings(tmp_path, '[telemetry]\nsentry_dsn = "https://k@o1.ingest.sentry.io/2"\n')
    assert s.telemetry_sentry_dsn == "https://k@o1.ingest.sentry.io/2" and s.telemetry_sentry is True
    assert settings(tmp_path, CIPX_SENTRY="off").telemetry_sentry is False
    assert settings(tmp_path, "").telemetry_sentry_dsn == ""


def test_the_settings_fingerprint_is_keyed_so_no_guess_can_be_confirmed_against_it(tmp_path):
    import hashlib
    import json

    from opik_cipx.config import differing_settings, settings_fingerprint

    daemon = settings(tmp_path, OPIK_CIPX_API_KEY="sk-guess-me")
    state = settings_fingerprint(daemon)
    assert set(state) == {"settings", "settings_key"} and len(state["settings_key"]) >= 64
    for guess in ("sk-guess-me", json.dumps("sk-guess-me")):  # the digest the daemon used to publish
        assert hashlib.sha256(guess.encode()).hexdigest()[:16] not in json.dumps(state)
    assert settings_fingerprint(daemon)["settings"]["opik.api_key"] != state["settings"]["opik.api_key"]  # new key
    assert differing_settings(settings(tmp_path, OPIK_CIPX_API_KEY="sk-guess-me"), state) == []
    changed = settings(tmp_path, OPIK_CIPX_API_KEY="sk-another", CIPX_CAPTURE_CONTENT="false")
    assert [opt.key for opt in differing_settings(changed, state)] == ["capture_content", "opik.api_key"]
    assert differing_settings(changed, {"settings": state["settings"]}) == []  # without its key: cannot tell
    assert differing_settings(changed, None) == []
