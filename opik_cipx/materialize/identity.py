"""Who is using Claude Code: the OAuth account Claude Code keeps in `~/.claude.json`.

Used for `sessions/<id>.json`, the `cc.identity.*` span metadata, `metadata.cipx.session.identity`
of traces, the `user:<email>` tag and `{field}` templating of the Opik project name. Every field
may be missing (API-key users have no `oauthAccount`); missing fields are None, never empty
strings. Of the plan and billing fields Cost Intelligence reads, the account record holds only
`billingType` (docs/OPIK.md, "Session"); the plan (`subscriptionType`) sits beside the OAuth
tokens in Claude Code's credentials, which opik-cipx never reads.
"""

import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

FIELDS = {
    "user_email": "emailAddress",
    "user_uuid": "accountUuid",
    "display_name": "displayName",
    "org_uuid": "organizationUuid",
    "org_name": "organizationName",
    "billing_type": "billingType",
}


@dataclass(frozen=True)
class Identity:
    """Who ran a call (docs/ARCHITECTURE.md, "Call record"): the session's hook record, else this
    machine's Claude Code account. A field that is absent, empty or not a string is None."""

    user_email: str | None = None
    user_uuid: str | None = None
    display_name: str | None = None
    org_uuid: str | None = None
    org_name: str | None = None
    billing_type: str | None = None  # e.g. `stripe_subscription`

    @classmethod
    def of(cls, fields: Mapping) -> "Identity":
        """From a `read_identity` result or the `identity` object of a session file."""
        return cls(**{key: _text(fields.get(key)) for key in FIELDS})

    def template_values(self) -> dict[str, str]:
        return template_values({key: getattr(self, key) for key in FIELDS})


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def claude_json_path(env: dict[str, str]) -> Path:
    """Where Claude Code keeps its account (`oauthAccount`): `$CLAUDE_CONFIG_DIR/.claude.json` or `~/.claude.json`."""
    config_dir = env.get("CLAUDE_CONFIG_DIR", "").strip()
    if config_dir:
        return Path(config_dir).expanduser() / ".claude.json"
    return Path(env.get("HOME") or Path.home()) / ".claude.json"


def read_identity(claude_json: Path) -> dict[str, str | None]:
    """The identity fields from `claude_json` (all None when the file or account is absent)."""
    try:
        account = json.loads(claude_json.read_text(encoding="utf-8")).get("oauthAccount") or {}
    except (OSError, ValueError, AttributeError):
        account = {}
    if not isinstance(account, dict):
        account = {}
    return {key: _text(account.get(source)) for key, source in FIELDS.items()}


def template_values(identity: dict[str, str | None]) -> dict[str, str]:
    """Values for `{field}` tokens in the project name; absent fields are left out."""
    values = {key: value for key, value in identity.items() if value}
    email = identity.get("user_email")
    if email:
        values["email"] = email
        values["username"] = email.split("@", 1)[0]
    values["hostname"] = socket.gethostname().split(".", 1)[0]
    return values


def render_template(template: str, values: dict[str, str]) -> str:
    """Replace `{field}` tokens with `values`; unknown or empty tokens stay literally."""
    out, i = [], 0
    while i < len(template):
        start = template.find("{", i)
        end = template.find("}", start + 1) if start >= 0 else -1
        if start < 0 or end < 0:
            out.append(template[i:])
            break
        token = template[start + 1 : end]
        out.append(template[i:start])
        out.append(values.get(token, template[start : end + 1]))
        i = end + 1
    return "".join(out)
