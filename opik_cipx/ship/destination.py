"""Where spans go: the Opik base URL, credential, workspace and project, and whether any is set.

Each value is resolved on its own: `OPIK_CIPX_*` environment variable, then `config.toml`
(both already in `Settings`), then the Opik SDK's own `~/.opik.config` (INI: `url_override`,
`api_key`, `workspace`, `project_name`; an `[opik_cc]` section overrides `[opik]`), then the
default. Opik counts as configured when a base URL or a credential was set somewhere: a
credential alone means Opik Cloud, a URL alone a self-hosted Opik without auth. With neither,
nothing is shipped anywhere and nothing is spooled for Opik (`store/spool.py`, `keep=False`); the
stats say how to configure it.

The credential is the API key, or a device token (`opik.device_token`, never from
`~/.opik.config`, which knows none): set, it is sent instead of the key, and records go only
through the endpoints a device token may call (`ship/opik_api.py`). `cost_intelligence` says
whether Opik's Cost Intelligence reads what is shipped (docs/OPIK.md, "The destination Cost
Intelligence reads"); `cleartext` whether records and the credential would cross the network
unencrypted (docs/SECURITY.md).
"""

import logging
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from opik_cipx.config import Settings, is_loopback_host, opik_url
from opik_cipx.urls import strip_credentials

log = logging.getLogger(__name__)

OPIK_CLOUD_URL = "https://www.comet.com/opik/api"
DEFAULT_WORKSPACE = "default"
DEFAULT_PROJECT = "claude-code"
COST_INTELLIGENCE_PROJECT = "claude-code"  # the one project Cost Intelligence reads
AI_SPEND_WORKSPACE = re.compile(r"__ai_spend_.+__\Z")  # an organisation's AI Spend workspace
SECTIONS = ("opik", "opik_cc")  # later sections override earlier ones
INI_KEYS = {"base_url": "url_override", "api_key": "api_key", "workspace": "workspace", "project": "project_name"}
NOT_CONFIGURED = (
    "Opik is not configured: nothing is sent, and no record is kept for it (the calls made meanwhile are in "
    "`opik-cipx report`, never shipped). Set base_url / api_key / workspace under [opik] in "
    "~/.opik-cipx/config.toml (or OPIK_CIPX_BASE_URL / OPIK_CIPX_API_KEY / OPIK_CIPX_WORKSPACE), or run "
    "`opik configure`; then `opik-cipx restart`."
)


@dataclass(frozen=True)
class Destination:
    base_url: str | None  # None when not configured
    api_key: str = field(repr=False)
    workspace: str
    project: str  # raw, may hold `{field}` tokens the materializer renders
    device_token: str = field(default="", repr=False)
    parent_trace_id: str = ""  # `opik.parent_trace_id`: every span under this trace, no trace records

    @property
    def configured(self) -> bool:
        return self.base_url is not None

    @property
    def credential(self) -> str:
        """What goes in `Authorization`: the device token when there is one, else the API key."""
        return self.device_token or self.api_key

    @property
    def endpoints(self) -> str:
        """`device_token`: only the endpoints a device token may call; else `batch`."""
        return "device_token" if self.device_token else "batch"

    @property
    def display_url(self) -> str | None:
        """The base URL fit for logs and stats (any user:password@ removed)."""
        return None if self.base_url is None else strip_credentials(self.base_url)

    @property
    def cleartext(self) -> str | None:
        """Why records (and the credential) would cross the network unencrypted: a plain `http://`
        base URL to a host that is not loopback; None otherwise."""
        if self.base_url is None:
            return None
        parts = urllib.parse.urlsplit(self.base_url)
        if parts.scheme != "http" or is_loopback_host(parts.hostname or ""):
            return None
        what = "the device token" if self.device_token else "the API key" if self.api_key else None
        sent = f"every record (prompts included) and {what}" if what else "every record (prompts included)"
        return (f"the Opik base URL {self.display_url} is plain http:// to a host that is not this machine: "
                f"{sent} cross the network unencrypted; use https://")


def cost_intelligence(destination: Destination) -> list[str]:
    """Why Opik's Cost Intelligence would not see what is shipped to `destination` (none: it would).

    It reads the project `claude-code` in the organisation's AI Spend workspace, and its users
    from the trace of each turn (docs/OPIK.md, "The destination Cost Intelligence reads")."""
    if not destination.configured:
        return ["Opik is not configured"]
    why = []
    project, workspace = destination.project, destination.workspace
    if "{" in project:
        why.append(f"the project '{project}' is templated, one per user: Cost Intelligence reads only the project "
                   f"'{COST_INTELLIGENCE_PROJECT}'")
    elif project != COST_INTELLIGENCE_PROJECT:
        why.append(f"the project is '{project}': Cost Intelligence reads only the project "
                   f"'{COST_INTELLIGENCE_PROJECT}'")
    if not AI_SPEND_WORKSPACE.match(workspace):
        why.append(f"the workspace '{workspace}' is not an AI Spend workspace (named __ai_spend_<...>__)")
    if destination.parent_trace_id:
        why.append("opik.parent_trace_id puts every span under one existing trace: no trace carries a session's "
                   "identity, so Cost Intelligence counts no user")
    return why


def read_opik_config(path: Path) -> dict[str, str]:
    """Non-empty destination values from the Opik SDK config file; `{}` when absent or unreadable."""
    if not path.exists():
        return {}
    import configparser  # only for a file to read: most starts of a daemon or a command have none

    parser = configparser.ConfigParser(interpolation=None)
    try:
        if not parser.read(path, encoding="utf-8"):
            return {}
    except (configparser.Error, UnicodeDecodeError) as exc:
        log.warning("ignoring %s: %s", path, str(exc).splitlines()[0])
        return {}
    out: dict[str, str] = {}
    for section in SECTIONS:
        if parser.has_section(section):
            for ours, theirs in INI_KEYS.items():
                value = parser.get(section, theirs, fallback="").strip()
                if value:
                    out[ours] = value
    if "base_url" in out:
        try:
            out["base_url"] = opik_url(out["base_url"])
        except ValueError as exc:
            log.warning("ignoring url_override in %s: %s", path, exc)
            del out["base_url"]
    return out


def resolve_destination(settings: Settings, opik_config: Path) -> Destination:
    """The Opik destination from `settings` (env, config.toml), then `opik_config`, then defaults."""
    ini = read_opik_config(opik_config)

    def pick(key: str) -> str:
        return getattr(settings, f"opik_{key}") or ini.get(key, "")

    base_url, api_key, device_token = pick("base_url"), pick("api_key"), settings.opik_device_token
    if not base_url and (api_key or device_token):
        base_url = OPIK_CLOUD_URL
    return Destination(
        base_url=base_url or None,
        api_key=api_key,
        workspace=pick("workspace") or DEFAULT_WORKSPACE,
        project=pick("project") or DEFAULT_PROJECT,
        device_token=device_token,
        parent_trace_id=settings.opik_parent_trace_id,
    )


def opik_config_path(env: dict[str, str]) -> Path:
    """`~/.opik.config` of the user running the daemon."""
    return Path(env.get("HOME") or Path.home()) / ".opik.config"
