"""Settings: environment variable, then `config.toml`, then the built-in default.

Every option is declared once in `OPTIONS` with its config key, its environment variable and
a one-line help text. A bad value stops loading with one `ConfigError` line that names the
file (or variable) and the key; unknown keys in the file are reported as warnings, so a
config written for a newer version does not stop an older daemon.
"""

import ipaddress
import math
import tomllib
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from opik_cipx.home import default_home

PRICE_RATE_KEYS = ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output")
TRUTHY = frozenset({"1", "true", "yes", "on"})
FALSY = frozenset({"0", "false", "no", "off", ""})
LOOPBACK_HOST = "127.0.0.1"


class ConfigError(Exception):
    """A setting could not be used; the message is one line fit for the user."""


def parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in TRUTHY:
        return True
    if text in FALSY:
        return False
    raise ValueError(f"expected one of 1/true/yes/on or 0/false/no/off, got {raw!r}")


def is_truthy(raw: str | None) -> bool:
    """Lenient truthiness for kill switches: only 1/true/yes/on count."""
    return (raw or "").strip().lower() in TRUTHY


def _number(kind: type, minimum: float) -> Callable[[Any], Any]:
    def parse(raw: Any) -> Any:
        if isinstance(raw, bool):
            raise ValueError(f"expected a number, got {raw!r}")
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            noun = "an integer" if kind is int else "a number"
            raise ValueError(f"expected {noun}, got {raw!r}") from None
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _text(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"expected a string, got {raw!r}")
    return raw.strip()


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _upstream_url(raw: Any) -> str:
    url = _text(raw).rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"expected https://host[:port], got {url!r}")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ValueError(f"plain http:// is only allowed to a loopback host, got {url!r}")
    if parts.path or parts.query:
        raise ValueError(f"expected a bare origin without a path, got {url!r}")
    return url


def _uuid_or_empty(raw: Any) -> str:
    text = _text(raw)
    if text:
        try:
            uuid.UUID(text)
        except ValueError:
            raise ValueError(f"expected an Opik id (a UUID), got {text!r}") from None
    return text


def opik_url(raw: Any) -> str:
    """An Opik REST API root such as `https://www.comet.com/opik/api`; empty means unset."""
    url = _text(raw).rstrip("/")
    if not url:
        return ""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"expected http(s)://host[:port][/path], got {url!r}")
    return url


def _proxy_url(raw: Any) -> str:
    url = _text(raw)
    if not url:
        return ""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"expected http://host:port, got {url!r}")
    return url


def parse_price_overrides(raw: Any) -> dict[str, dict[str, float]]:
    """`[prices."<model>"]` tables as {model: {rate key: USD per million tokens}}.

    Raises ValueError naming the bad key, e.g. `prices.claude-foo-5.output: expected a number`.
    Whether a model needs every rate depends on the packaged table: pricing checks that.
    """
    if not isinstance(raw, dict):
        raise ValueError("prices: expected a table of models")
    out = {}
    for name, row in raw.items():
        where = f"prices.{name}"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a table with {', '.join(PRICE_RATE_KEYS)}")
        out[str(name)] = {key: _price_rate(f"{where}.{key}", key, value) for key, value in row.items()}
    return out


def _price_rate(where: str, key: str, value: object) -> float:
    if key not in PRICE_RATE_KEYS:
        raise ValueError(f"{where}: unknown key; expected one of {', '.join(PRICE_RATE_KEYS)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    if value < 0:
        raise ValueError(f"{where}: must not be negative, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Option:
    key: str
    env: str | None
    parse: Callable[[Any], Any]
    default: Any
    help: str

    @property
    def attr(self) -> str:
        return self.key.replace(".", "_")


OPTIONS: tuple[Option, ...] = (
    Option("disabled", "CIPX_DISABLED", parse_bool, False,
           "master kill switch: sync tears the install down, proxy exits 0 at once"),
    Option("capture_content", "CIPX_CAPTURE_CONTENT", parse_bool, True,
           "false ships counts, costs and structure but never prompt/completion text"),
    Option("upstream_url", "CIPX_UPSTREAM_URL", _upstream_url, "https://api.anthropic.com",
           "where calls are forwarded; http:// only to a loopback host (tests, benchmarks)"),
    Option("upstream_proxy", "CIPX_UPSTREAM_PROXY", _proxy_url, "",
           "http://host:port of a proxy to tunnel the upstream leg through (CONNECT)"),
    Option("ca_bundle", "CIPX_CA_BUNDLE", _text, "",
           "extra PEM CA file trusted for the upstream leg (corporate TLS, tests)"),
    Option("listen_host", "CIPX_LISTEN_HOST", _text, LOOPBACK_HOST,
           "address every listener binds; anything but 127.0.0.1 is refused"),
    Option("upstream_connect_timeout_s", None, _number(float, 0.1), 10.0,
           "seconds to open the upstream connection before answering 502"),
    Option("upstream_timeout_s", None, _number(float, 1), 600.0,
           "seconds of upstream silence before the exchange is abandoned"),
    Option("client_header_timeout_s", None, _number(float, 1), 30.0,
           "seconds a client has, from its first byte, to send a whole request head"),
    Option("client_body_timeout_s", None, _number(float, 1), 120.0,
           "seconds a client has to send a whole request body"),
    Option("client_idle_timeout_s", None, _number(float, 1), 120.0,
           "seconds a client connection may wait for its next request before it is closed"),
    Option("client_max_connections", None, _number(int, 1), 256,
           "connections served at once per listener; beyond it idle ones are closed, then requests get 503"),
    Option("drain_timeout_s", None, _number(float, 0), 30.0,
           "seconds a stopping daemon lets in-flight calls finish"),
    Option("tee_queue_max", None, _number(int, 1), 128,
           "captures held in memory for the materializer; beyond it they are dropped, counted"),
    Option("prices", None, parse_price_overrides, {},
           "[prices.\"<model>\"] tables of USD/MTok rates that add models to or override prices.json"),
    Option("captures.enabled", "CIPX_CAPTURES", parse_bool, True,
           "keep raw captures on disk for replay and the viewer"),
    Option("captures.max_mb", None, _number(int, 1), 512,
           "disk budget for raw captures; oldest segments are deleted beyond it"),
    Option("captures.max_age_days", None, _number(float, 0), 7.0,
           "raw capture segments older than this are deleted"),
    Option("captures.segment_mb", None, _number(int, 1), 16,
           "raw capture segment size before rotation"),
    Option("logs.max_mb", None, _number(int, 1), 10, "gateway log size before rotation"),
    Option("logs.backups", None, _number(int, 0), 3, "rotated gateway logs kept"),
    Option("opik.base_url", "OPIK_CIPX_BASE_URL", opik_url, "",
           "Opik REST API root; unset: ~/.opik.config, else Opik Cloud when an API key is set"),
    Option("opik.api_key", "OPIK_CIPX_API_KEY", _text, "", "Opik API key (Opik Cloud); never logged"),
    Option("opik.workspace", "OPIK_CIPX_WORKSPACE", _text, "", "Opik workspace; unset: ~/.opik.config, else 'default'"),
    Option("opik.project", "OPIK_CIPX_PROJECT", _text, "",
           "Opik project, with {field} templating; unset: ~/.opik.config, else 'claude-code'"),
    Option("opik.debug", "OPIK_CIPX_DEBUG", parse_bool, False, "log at debug level, every batch sent to Opik included"),
    Option("opik.timeout_s", None, _number(float, 1), 30.0, "seconds one request to Opik may take"),
    Option("opik.retry_max_s", None, _number(float, 0.01), 300.0,
           "cap of the backoff between retries while Opik is down or failing"),
    Option("opik.auth_probe_s", None, _number(float, 0.01), 300.0,
           "seconds between probes while Opik refuses the API key or workspace"),
    Option("spool.max_mb", None, _number(float, 0.01), 512.0,
           "disk budget for unshipped records; beyond it the oldest segments are dropped, counted"),
    Option("spool.segment_mb", None, _number(float, 0.001), 8.0, "spool segment size before rotation"),
    Option("spool.inmem_max", None, _number(int, 1), 10000,
           "records waiting for the disk write; beyond it new ones are dropped, counted"),
    Option("spool.inmem_max_mb", None, _number(float, 0.01), 64.0,
           "bytes of records waiting for the disk write; beyond it new ones are dropped, counted"),
    Option("spool.commit_interval_s", None, _number(float, 0.001), 0.2,
           "group commit: under load, at most one fsync per this many seconds"),
    Option("spans.max_io_kb", None, _number(int, 1), 256,
           "span input/output larger than this (JSON) is replaced by an explicit truncation marker"),
    Option("opik.parent_trace_id", "OPIK_CC_PARENT_TRACE_ID", _uuid_or_empty, "",
           "put every span under this existing Opik trace instead of one trace per turn"),
    Option("opik.root_span_id", "OPIK_CC_ROOT_SPAN_ID", _uuid_or_empty, "",
           "with opik.parent_trace_id: the span every top-level span hangs under"),
)


@dataclass(frozen=True)
class Settings:
    """Resolved settings. Option values are attributes named like their key, dots as `_`."""

    home: Path
    config_path: Path
    values: dict[str, Any]
    warnings: tuple[str, ...] = field(default=())

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def captures_dir(self) -> Path:
        return self.home / "captures"

    @property
    def spool_dir(self) -> Path:
        return self.home / "spool"

    @property
    def sessions_dir(self) -> Path:
        return self.home / "sessions"

    @property
    def state_path(self) -> Path:
        return self.home / "state.json"

    @property
    def ports_path(self) -> Path:
        return self.home / "ports.json"


def _lookup(table: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = table
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _unknown_keys(table: dict[str, Any], prefix: str = "") -> list[str]:
    known = {opt.key for opt in OPTIONS}
    sections = {opt.key.rsplit(".", 1)[0] for opt in OPTIONS if "." in opt.key}
    out = []
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted in sections:
            out.extend(_unknown_keys(value, dotted + "."))
        elif dotted not in known:
            out.append(dotted)
    return out


def read_config_file(path: Path) -> dict[str, Any]:
    """The parsed TOML table, `{}` when the file does not exist."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def load_settings(env: dict[str, str]) -> Settings:
    """Resolve every option; raise `ConfigError` naming the file or variable and key."""
    home = default_home(env)
    config_path = Path(env.get("CIPX_CONFIG") or home / "config.toml").expanduser()
    table = read_config_file(config_path)
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        if opt.env and opt.env in env:
            source, raw = f"environment variable {opt.env}", env[opt.env]
        else:
            found, raw = _lookup(table, opt.key)
            if not found:
                values[opt.attr] = opt.default
                continue
            source = f"config file {config_path}, key '{opt.key}'"
        try:
            values[opt.attr] = opt.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"bad setting in {source}: {exc}") from None
    warnings = tuple(
        f"config file {config_path}: unknown key '{key}' ignored" for key in _unknown_keys(table)
    )
    return Settings(home=home, config_path=config_path, values=values, warnings=warnings)
