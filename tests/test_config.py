"""Settings resolution: env -> config.toml -> default, with one clear line per bad value."""

import pytest

from opik_cipx.config import ConfigError, load_settings


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


def test_http_upstream_allowed_to_loopback(tmp_path):
    assert settings(tmp_path, CIPX_UPSTREAM_URL="http://127.0.0.1:8080/").upstream_url == "http://127.0.0.1:8080"
