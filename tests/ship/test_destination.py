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


def test_what_cost_intelligence_reads_and_why_not(tmp_path):
    from opik_cipx.ship.destination import cost_intelligence

    workspace = {"OPIK_CIPX_WORKSPACE": "__ai_spend_acme__", "OPIK_CIPX_BASE_URL": "https://opik.example/api"}
    assert cost_intelligence(destination(tmp_path, **workspace)) == []  # the default project is 'claude-code'
    templated = cost_intelligence(destination(tmp_path, OPIK_CIPX_PROJECT="{username}-cc", **workspace))
    assert templated == ["the project '{username}-cc' is templated, one per user: Cost Intelligence reads only "
                         "the project 'claude-code'"]
    mine = cost_intelligence(destination(tmp_path, OPIK_CIPX_API_KEY="k", OPIK_CIPX_PROJECT="mine"))
    assert len(mine) == 2 and "'mine'" in mine[0] and "'default' is not an AI Spend workspace" in mine[1]
    under = cost_intelligence(destination(tmp_path, OPIK_CC_PARENT_TRACE_ID="0190f1a2-0000-7000-8000-000000000001",
                                          **workspace))
    assert len(under) == 1 and "counts no user" in under[0]
    assert cost_intelligence(destination(tmp_path)) == ["Opik is not configured"]


def test_a_device_token_alone_means_opik_cloud_and_is_the_credential(tmp_path):
    d = destination(tmp_path, OPIK_CIPX_DEVICE_TOKEN="dev-token", OPIK_CIPX_API_KEY="key")
    assert d.base_url == OPIK_CLOUD_URL and d.credential == "dev-token" and d.endpoints == "device_token"
    assert "dev-token" not in repr(d)
    d = destination(tmp_path, ini="[opik]\napi_key = key\n")
    assert d.credential == "key" and d.endpoints == "batch"


def test_plain_http_to_another_host_is_called_cleartext(tmp_path):
    assert destination(tmp_path, OPIK_CIPX_BASE_URL="http://localhost:5173/api").cleartext is None
    assert destination(tmp_path, OPIK_CIPX_BASE_URL="http://[::1]:5173/api").cleartext is None
    assert destination(tmp_path, OPIK_CIPX_BASE_URL="https://opik.corp/api", OPIK_CIPX_API_KEY="k").cleartext is None
    warned = destination(tmp_path, OPIK_CIPX_BASE_URL="http://u:pw@opik.corp/api", OPIK_CIPX_API_KEY="k").cleartext
    assert warned.startswith("the Opik base URL http://opik.corp/api is plain http://") and "the API key" in warned
    assert "pw" not in warned


def test_the_daemon_warns_once_of_an_opik_reached_in_clear(home, upstream):
    from tests.conftest import DaemonProcess, run_command, wait_for

    home.mkdir(parents=True)
    (home / "config.toml").write_text("[opik]\ntimeout_s = 1\n")
    daemon = DaemonProcess(home, upstream.url, OPIK_CIPX_BASE_URL="http://192.0.2.1:9/api",  # TEST-NET: no answer
                           OPIK_CIPX_API_KEY="sekrit", OPIK_CIPX_WORKSPACE="__ai_spend_acme__")
    try:
        opik = daemon.stats()["opik"]
        assert "cross the network unencrypted" in opik["cleartext"]
        assert opik["cost_intelligence"] == {"project": "claude-code", "why_not": []}
        status = run_command(home, "status").stdout
        assert "  ! the Opik base URL http://192.0.2.1:9/api is plain http://" in status
        assert "  cost intel.  sees it: project claude-code, workspace __ai_spend_acme__, batch endpoints" in status
        log = home / "logs" / "cipx.log"
        wait_for(lambda: "unencrypted" in log.read_text(), what="the warning in the log")
    finally:
        assert daemon.stop() == 0
    text = log.read_text()
    assert text.count("unencrypted") == 1 and "sekrit" not in text
