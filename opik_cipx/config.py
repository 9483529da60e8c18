"""Settings: environment variable, then `config.toml`, then the built-in default.

Every option is declared once in `OPTIONS` with its config key, its environment variable and
a one-line help text. A bad value stops loading with one `ConfigError` line that names the
file (or variable) and the key; unknown keys in the file are reported as warnings, so a
config written for a newer version does not stop an older daemon. A tolerant load (for the
read-only commands that name the settings they read, cli.py) gives a bad value its default
instead and lists it in `Settings.unusable`, with the line it would have stopped on.
"""

import ipaddress
import json
import math
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from typing import Any

from opik_cipx.caps import Budget, parse_budget
from opik_cipx.home import default_home
from opik_cipx.urls import strip_credentials

PRICE_RATE_KEYS = ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output")
PRICE_NOTE_KEYS = ("source", "checked", "secondary", "note")  # documentation, shown by `opik-cipx prices`
PRICE_CHANGE_KEYS = ("effective_from", *PRICE_RATE_KEYS, "fast_multiplier", "tiers", "note")
PRICE_ROW_KEYS = (*PRICE_RATE_KEYS, "fast_multiplier", "tiers", "changes", *PRICE_NOTE_KEYS, "unconfirmed")
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
        import uuid  # only for an id that is set: uuid (and platform) cost every command's start

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


@dataclass(frozen=True)
class SentryDsn:
    """Where error reports go: a Sentry DSN split into its envelope endpoint and public key."""

    envelope_url: str  # {scheme}://{host}[:port][/prefix]/api/{project_id}/envelope/
    public_key: str
    host: str


def parse_sentry_dsn(text: str) -> SentryDsn:
    """`https://<public key>@<host>[:port][/prefix]/<project id>`; plain http only to a loopback host."""
    parts = urllib.parse.urlsplit(text.strip())
    shape = "expected a Sentry DSN such as https://<key>@o1.ingest.sentry.io/123"
    if parts.scheme not in ("https", "http") or not parts.hostname or not parts.username:
        raise ValueError(shape)
    prefix, _, project = parts.path.rstrip("/").rpartition("/")
    if not project.isdigit() or parts.query or parts.fragment:
        raise ValueError(f"{shape} (the last part of the path is the project number)")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ValueError("a Sentry DSN with plain http:// is only allowed to a loopback host; use https://")
    origin = strip_credentials(f"{parts.scheme}://{parts.netloc}")  # the key goes in a header, not the URL
    return SentryDsn(f"{origin}{prefix}/api/{project}/envelope/", parts.username, parts.hostname)


def _sentry_dsn(raw: Any) -> str:
    text = _text(raw)
    if text:
        parse_sentry_dsn(text)
    return text


def _proxy_url(raw: Any) -> str:
    url = _text(raw)
    if not url:
        return ""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"expected http://host:port, got {url!r}")
    return url


def parse_price_overrides(raw: Any) -> dict[str, dict[str, Any]]:
    """`[prices."<model>"]` tables as {model: price row} (see `parse_price_row`): the `prices`
    setting, parsed once when the settings load; `pricing.load_price_table` takes it as it is.

    Raises ValueError naming the bad key, e.g. `prices.claude-foo-5.output: expected a number`.
    Whether a model needs every rate depends on the packaged table: pricing checks that.
    """
    if not isinstance(raw, dict):
        raise ValueError("prices: expected a table of models")
    return {str(name): parse_price_row(f"prices.{name}", row) for name, row in raw.items()}


def parse_price_row(where: str, row: Any) -> dict[str, Any]:
    """One model's price, as `prices.json` and `[prices."<model>"]` write it, checked and normalised.

    The result holds only what the row says: `rates` ({rate key: USD per million tokens}, maybe
    partial), `fast_multiplier` (a number, or None for "no fast mode"), `tiers` (a list of
    {name, above_prompt_tokens, rates} with all five rates, lowest threshold first), `changes`
    (dated rows, oldest first, each with `effective_from`, `at_ns` and any of the above) and
    the documentation keys (`source`, `checked`, `secondary`, `note`, `unconfirmed`).
    Raises ValueError naming the bad key (`where` is its dotted path).
    """
    out = _price_fields(where, row, PRICE_ROW_KEYS)
    if "changes" in row:
        changes = row["changes"]
        if not isinstance(changes, list) or not changes:
            raise ValueError(f"{where}.changes: expected a list of tables ([[{_toml_path(where)}.changes]])")
        parsed = [_price_change(f"{where}.changes[{i}]", change) for i, change in enumerate(changes)]
        out["changes"] = sorted(parsed, key=lambda change: change["at_ns"])
    return out


def _price_change(where: str, change: Any) -> dict[str, Any]:
    if not isinstance(change, dict):
        raise ValueError(f"{where}: expected a table with effective_from and the prices it changes")
    if "effective_from" not in change:
        raise ValueError(f"{where}: missing effective_from (a date such as 2026-10-07)")
    out = _price_fields(where, change, PRICE_CHANGE_KEYS)
    label, at_ns = _effective_from(f"{where}.effective_from", change["effective_from"])
    if not out.get("rates") and "fast_multiplier" not in out and "tiers" not in out:
        raise ValueError(f"{where}: changes nothing; give at least one rate, fast_multiplier or tiers")
    return {**out, "effective_from": label, "at_ns": at_ns}


def _price_fields(where: str, row: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a table with {', '.join(PRICE_RATE_KEYS)}")
    out: dict[str, Any] = {}
    rates = {}
    for key, value in row.items():
        here = f"{where}.{key}"
        if key not in allowed:
            raise ValueError(f"{here}: unknown key; expected one of {', '.join(allowed)}")
        if key in PRICE_RATE_KEYS:
            rates[key] = _price_rate(here, value)
        elif key == "fast_multiplier":
            out[key] = _fast_multiplier(here, value)
        elif key == "tiers":
            out[key] = _price_tiers(here, value)
        elif key == "unconfirmed":
            if not isinstance(value, bool):
                raise ValueError(f"{here}: expected true or false, got {value!r}")
            out[key] = value
        elif key in PRICE_NOTE_KEYS:
            if not isinstance(value, str):
                raise ValueError(f"{here}: expected a string, got {value!r}")
            out[key] = value
    if rates:
        out["rates"] = rates
    return out


def _price_rate(where: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    if value < 0:
        raise ValueError(f"{where}: must not be negative, got {value!r}")
    return float(value)


def _fast_multiplier(where: str, value: object) -> float | None:
    """A fast-mode multiplier (>= 1); `false` (config.toml) or null (prices.json): no fast mode."""
    if value is None or value is False:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 1:
        raise ValueError(f"{where}: expected a number of at least 1, or false for no fast mode, got {value!r}")
    return float(value)


def _price_tiers(where: str, tiers: object) -> list[dict[str, Any]]:
    if not isinstance(tiers, list):
        raise ValueError(f"{where}: expected a list of tables ([[{_toml_path(where)}]])")
    out = []
    for i, tier in enumerate(tiers):
        here = f"{where}[{i}]"
        if not isinstance(tier, dict):
            raise ValueError(f"{here}: expected a table with above_prompt_tokens and {', '.join(PRICE_RATE_KEYS)}")
        for key in tier:
            if key not in ("name", "above_prompt_tokens", *PRICE_RATE_KEYS):
                raise ValueError(f"{here}.{key}: unknown key; expected name, above_prompt_tokens or a rate")
        threshold = tier.get("above_prompt_tokens")
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise ValueError(f"{here}.above_prompt_tokens: expected a whole number of tokens of at least 1, "
                             f"got {threshold!r}")
        missing = [key for key in PRICE_RATE_KEYS if key not in tier]
        if missing:
            raise ValueError(f"{here}: a tier needs every rate; missing {', '.join(missing)}")
        name = tier.get("name", f"prompt_over_{threshold}")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{here}.name: expected a non-empty string, got {name!r}")
        rates = {key: _price_rate(f"{here}.{key}", tier[key]) for key in PRICE_RATE_KEYS}
        out.append({"name": name.strip(), "above_prompt_tokens": threshold, "rates": rates})
    thresholds = [tier["above_prompt_tokens"] for tier in out]
    if len(set(thresholds)) != len(thresholds):
        raise ValueError(f"{where}: two tiers have the same above_prompt_tokens")
    return sorted(out, key=lambda tier: tier["above_prompt_tokens"])


def _effective_from(where: str, value: object) -> tuple[str, int]:
    """(label, epoch ns) of a date (midnight UTC) or a date-time (UTC unless it says otherwise)."""
    moment = None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            moment = None
    if moment is None:
        raise ValueError(f"{where}: expected a date such as 2026-10-07, got {value!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    label = moment.date().isoformat() if moment.time() == dt_time(0) and moment.utcoffset() == timedelta(0) \
        else moment.isoformat()
    return label, int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def _toml_path(where: str) -> str:
    model, _, rest = where.removeprefix("prices.").partition(".")
    return f'prices."{model}"' + (f".{rest}" if rest else "")


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
           "seconds a client has, from the end of a request head, to send its whole body"),
    Option("client_idle_timeout_s", None, _number(float, 1), 120.0,
           "seconds a client connection may wait for its next request before it is closed"),
    Option("client_max_connections", None, _number(int, 1), 256,
           "requests served at once per listener (stalled and idle connections take none); beyond it, 503"),
    Option("client_buffer_max_mb", None, _number(float, 1), 256.0,
           "request bytes held at once per listener, read or in service; beyond, slow ones are dropped, then 503"),
    Option("drain_timeout_s", None, _number(float, 0), 30.0,
           "seconds a stopping daemon lets in-flight calls finish"),
    Option("capture_response_max_mb", None, _number(float, 1), 32.0,
           "response bytes kept per call for its records; beyond, its start and end (the client gets every byte)"),
    Option("tee_queue_max", None, _number(int, 1), 128,
           "finished exchanges held in memory until written to the capture log; beyond, dropped, counted"),
    Option("tee_queue_max_mb", None, _number(float, 0.01), 256.0,
           "body bytes held in memory until written to the capture log; beyond, dropped, counted"),
    Option("prices", None, parse_price_overrides, {},
           "[prices.\"<model>\"] tables that add models to or override prices.json "
           "(rates, tiers, fast mode, dated changes)"),
    Option("budget", None, parse_budget, Budget(),
           "[budget] spend caps in USD, off unless set: session_usd, day_usd, week_usd, month_usd, warn_at = 0.8; "
           "per project [budget.projects.\"<dir>\"] (docs/BUDGETS.md)"),
    Option("captures.enabled", "CIPX_CAPTURES", parse_bool, True,
           "keep raw captures on disk for replay and the viewer (off: only until materialized)"),
    Option("captures.max_mb", None, _number(int, 1), 512,
           "disk budget for raw captures; oldest segments are deleted beyond it (unmaterialized ones counted)"),
    Option("captures.max_age_days", None, _number(float, 0), 7.0,
           "materialized raw capture segments older than this are deleted"),
    Option("captures.segment_mb", None, _number(int, 1), 16,
           "raw capture segment size before rotation"),
    Option("ledger.retention_days", None, _number(float, 1), 400.0,
           "days of calls kept in ledger.db for `report` and the dashboard; older days are deleted"),
    Option("logs.max_mb", None, _number(int, 1), 10, "gateway log size before rotation"),
    Option("logs.backups", None, _number(int, 0), 3, "rotated gateway logs kept"),
    Option("opik.base_url", "OPIK_CIPX_BASE_URL", opik_url, "",
           "Opik REST API root; unset: ~/.opik.config, else Opik Cloud when an API key is set"),
    Option("opik.api_key", "OPIK_CIPX_API_KEY", _text, "", "Opik API key (Opik Cloud); never logged"),
    Option("opik.device_token", "OPIK_CIPX_DEVICE_TOKEN", _text, "",
           "a device token for the organisation's AI Spend workspace, sent instead of the API key: records go "
           "only to the endpoints it may call (traces one by one); never logged"),
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
    Option("telemetry.sentry_dsn", "CIPX_SENTRY_DSN", _sentry_dsn, "",
           "opt in to error reports: a Sentry DSN that gets exception type, stack frames and versions, never data"),
    Option("telemetry.sentry", "CIPX_SENTRY", parse_bool, True,
           "off: never send error reports, even with a DSN set"),
)


@dataclass(frozen=True)
class Settings:
    """Resolved settings. Option values are attributes named like their key, dots as `_`."""

    home: Path
    config_path: Path
    values: dict[str, Any]
    warnings: tuple[str, ...] = field(default=())
    # (key, its one line) of each setting a tolerant load could not use and gave its default;
    # key "" when the whole file could not be read
    unusable: tuple[tuple[str, str], ...] = field(default=())

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
    def checkpoint_path(self) -> Path:
        return self.home / "materializer" / "checkpoint.json"

    @property
    def ledger_path(self) -> Path:
        return self.home / "ledger.db"

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
    import tomllib  # only where there is a file: its parser costs every start of a command without one

    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def load_settings(env: dict[str, str], tolerant: bool = False) -> Settings:
    """Resolve every option; raise `ConfigError` naming the file or variable and key. `tolerant`:
    never raise; a value that cannot be used (or every value of a file that cannot be read)
    takes its default and is listed in `unusable`."""
    home = default_home(env)
    config_path = Path(env.get("CIPX_CONFIG") or home / "config.toml").expanduser()
    unusable: list[tuple[str, str]] = []
    try:
        table = read_config_file(config_path)
    except ConfigError as exc:
        if not tolerant:
            raise
        table, unusable = {}, [("", str(exc))]
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
            error = ConfigError(f"bad setting in {source}: {exc}")
            if not tolerant:
                raise error from None
            values[opt.attr] = opt.default
            unusable.append((opt.key, str(error)))
    warnings = tuple(
        f"config file {config_path}: unknown key '{key}' ignored" for key in _unknown_keys(table)
    )
    return Settings(home=home, config_path=config_path, values=values, warnings=warnings, unusable=tuple(unusable))


EXAMPLE_HEADER = """\
# opik-cipx settings: ~/.opik-cipx/config.toml (CIPX_CONFIG names another file).
# Every setting with its default, commented out: uncomment and change what you need.
# An environment variable named beside a setting wins over this file, but a daemon run by
# systemd or launchd never sees your shell's environment. Changes apply at `opik-cipx restart`.
# Generated by `opik-cipx config --example`."""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)  # a TOML basic string: the defaults hold no control characters


def example_toml() -> str:
    """A `config.toml` holding every option of `OPTIONS`, commented out, with its help and default.

    Generated, so it never drifts from the options the code reads. Top-level keys come first,
    then one `[section]` per dotted prefix, in the order `OPTIONS` first names them.
    """
    sections: dict[str, list[Option]] = {}
    for opt in OPTIONS:
        sections.setdefault(opt.key.rpartition(".")[0], []).append(opt)
    out = [EXAMPLE_HEADER]
    for section, options in sorted(sections.items(), key=lambda item: item[0] != ""):
        if section:
            out.append(f"\n[{section}]")
        for opt in options:
            name = opt.key.rpartition(".")[2]
            env = f" (env {opt.env})" if opt.env else ""
            out.append(f"\n# {opt.help}{env}")
            if not isinstance(opt.default, (dict, Budget)):  # a table (prices, budget): its help says how
                out.append(f"# {name} = {_toml_value(opt.default)}")
    return "\n".join(out) + "\n"


def settings_fingerprint(settings: Settings, key: str | None = None) -> dict[str, Any]:
    """`{"settings_key": key, "settings": {option key: digest}}` for `state.json` (0600) only.

    Each digest is HMAC-SHA256 of the option's resolved value under `key` (16 hex digits), never
    the value; `key` is new random bytes unless given, so the daemon draws one per start. Keyed,
    so nobody without `state.json` can confirm a guessed API key against a digest; the admin
    port, open to every local user, serves neither. `sync` recomputes the digests of its own
    environment under the daemon's key to name the settings the running daemon does not use.
    """
    import hashlib
    import hmac
    import secrets

    key = key or secrets.token_hex(32)

    def digest(value: Any) -> str:
        text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
        return hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest()[:16]

    return {"settings_key": key, "settings": {opt.key: digest(settings.values[opt.attr]) for opt in OPTIONS}}


def differing_settings(settings: Settings, state: object) -> list[Option]:
    """The options whose value in `settings` differs from what a daemon's `state.json` (`state`)
    says it uses; none when `state` lacks the digests or their key (an older daemon, or
    `/admin/state`, which carries neither)."""
    if not isinstance(state, dict):
        return []
    theirs, key = state.get("settings"), state.get("settings_key")
    if not isinstance(theirs, dict) or not isinstance(key, str) or not key:
        return []
    ours = settings_fingerprint(settings, key)["settings"]
    return [opt for opt in OPTIONS if opt.key in theirs and theirs[opt.key] != ours[opt.key]]
