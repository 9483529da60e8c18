"""Where spans go: the Opik base URL, API key, workspace and project, and whether any is set.

Each value is resolved on its own: `OPIK_CIPX_*` environment variable, then `config.toml`
(both already in `Settings`), then the Opik SDK's own `~/.opik.config` (INI: `url_override`,
`api_key`, `workspace`, `project_name`; an `[opik_cc]` section overrides `[opik]`), then the
default. Opik counts as configured when a base URL or an API key was set somewhere: a key
alone means Opik Cloud, a URL alone a self-hosted Opik without auth. With neither, nothing is
shipped anywhere; spans stay in the spool (bounded) and the stats say how to configure it.
"""

import configparser
import logging
from dataclasses import dataclass, field
from pathlib import Path

from opik_cipx.config import Settings, opik_url
from opik_cipx.urls import strip_credentials

log = logging.getLogger(__name__)

OPIK_CLOUD_URL = "https://www.comet.com/opik/api"
DEFAULT_WORKSPACE = "default"
DEFAULT_PROJECT = "claude-code"
SECTIONS = ("opik", "opik_cc")  # later sections override earlier ones
INI_KEYS = {"base_url": "url_override", "api_key": "api_key", "workspace": "workspace", "project": "project_name"}
NOT_CONFIGURED = (
    "Opik is not configured: spans are kept in the local spool (bounded by spool.max_mb) and not sent. "
    "Set base_url / api_key / workspace under [opik] in ~/.opik-cipx/config.toml (or OPIK_CIPX_BASE_URL / "
    "OPIK_CIPX_API_KEY / OPIK_CIPX_WORKSPACE), or run `opik configure`; then `opik-cipx restart`."
)


@dataclass(frozen=True)
class Destination:
    base_url: str | None  # None when not configured
    api_key: str = field(repr=False)
    workspace: str
    project: str  # raw, may hold `{field}` tokens the materializer renders

    @property
    def configured(self) -> bool:
        return self.base_url is not None

    @property
    def display_url(self) -> str | None:
        """The base URL fit for logs and stats (any user:password@ removed)."""
        return None if self.base_url is None else strip_credentials(self.base_url)


def read_opik_config(path: Path) -> dict[str, str]:
    """Non-empty destination values from the Opik SDK config file; `{}` when absent or unreadable."""
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

    base_url, api_key = pick("base_url"), pick("api_key")
    if not base_url and api_key:
        base_url = OPIK_CLOUD_URL
    return Destination(
        base_url=base_url or None,
        api_key=api_key,
        workspace=pick("workspace") or DEFAULT_WORKSPACE,
        project=pick("project") or DEFAULT_PROJECT,
    )


def opik_config_path(env: dict[str, str]) -> Path:
    """`~/.opik.config` of the user running the daemon."""
    return Path(env.get("HOME") or Path.home()) / ".opik.config"
