"""The Opik destination: env -> config.toml -> ~/.opik.config -> default, per value."""

import pytest

from opik_cipx.config import ConfigError, load_settings
from opik_cipx.ship.destination import (
    DEFAULT_PROJECT,
    DEFAULT_WORKSPACE,
    OPIK_CLOUD_URL,
    opik_config_path,
    resolve_destination,
)


def destination(tmp_path, toml: str = "", ini: str | None = None, **env: str):
    home = tmp_path / "cipx"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(toml)
    if ini is not None:
        (tmp_path / ".opik.config").write_text(ini)
    env = {"CIPX_HOME": str(home), "HOME": str(tmp_path), **env}
    return resolve_destination(load_settings(env), opik_config_path(env))


def test_nothing_configured_ships_nowhere(tmp_path):
    d = destination(tmp_path)
    assert not d.configured and d.base_url is None and d.display_url is None
    assert (d.api_key, d.workspace, d.project) == ("", DEFAULT_WORKSPACE, DEFAULT_PROJECT)


def test_an_api_key_alone_means_opik_cloud_and_a_url_alone_a_local_opik(tmp_path):
    cloud = destination(tmp_path, OPIK_CIPX_API_KEY="k")
    assert cloud.configured and cloud.base_url == OPIK_CLOUD_URL
    local = destination(tmp_path, OPIK_CIPX_BASE_URL="http://localhost:5173/api/")
    assert local.configured and local.base_url == "http://localhost:5173/api" and local.api_key == ""


def test_env_beats_config_toml_beats_opik_config_beats_default(tmp_path):
    ini = ("[opik]\nurl_override = https://ini.example/opik/api/\napi_key = ini-key\nworkspace = ini-ws\n"
           "project_name = ini-project\n")
    toml = '[opik]\napi_key = "toml-key"\nworkspace = "toml-ws"\n'
    d = destination(tmp_path, toml, ini, OPIK_CIPX_WORKSPACE="env-ws")
    assert d.workspace == "env-ws"
    assert d.api_key == "toml-key"
    assert d.base_url == "https://ini.example/opik/api"
    assert d.project == "ini-project"
    assert destination(tmp_path, "", "[opik]\nworkspace = w\n").configured is False  # no URL, no key


def test_an_opik_cc_section_overrides_opik(tmp_path):
    ini = ("[opik_cc]\nproject_name = cc-{username}\n"
           "[opik]\nurl_override = http://127.0.0.1:5173/api\nproject_name = general\nworkspace = ws\n")
    d = destination(tmp_path, ini=ini)
    assert (d.base_url, d.workspace, d.project) == ("http://127.0.0.1:5173/api", "ws", "cc-{username}")


def test_a_broken_opik_config_is_ignored_but_a_broken_env_value_is_an_error(tmp_path, caplog):
    assert destination(tmp_path, ini="not an ini file\n").configured is False
    d = destination(tmp_path, ini="[opik]\nurl_override = ftp://nope\napi_key = k\n")
    assert d.base_url == OPIK_CLOUD_URL and "url_override" in caplog.text
    assert destination(tmp_path, ini="[opik]\nurl_override = %(x)s\n").configured is False
    with pytest.raises(ConfigError, match="OPIK_CIPX_BASE_URL"):
        destination(tmp_path, OPIK_CIPX_BASE_URL="api.example.com")


def test_the_api_key_stays_out_of_repr_and_the_url_shown(tmp_path):
    d = destination(tmp_path, OPIK_CIPX_API_KEY="sekrit", OPIK_CIPX_BASE_URL="https://user:pw@opik.example/api")
    assert "sekrit" not in repr(d)
    assert d.display_url == "https://opik.example/api"
