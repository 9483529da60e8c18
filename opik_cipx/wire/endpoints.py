"""The Claude Code routes opik-cipx knows. Anything else is still forwarded, but counted in
`unknown_endpoints`: usually a Claude Code wire-format change ahead of an opik-cipx update."""

KNOWN_ROUTES = frozenset(
    {
        ("POST", "/v1/messages"),
        ("POST", "/v1/messages/count_tokens"),
        ("GET", "/v1/models"),
        ("HEAD", "/"),
        ("POST", "/api/event_logging/batch"),
        ("POST", "/api/event_logging/v2/batch"),
    }
)
KNOWN_PREFIXES = (("GET", "/v1/models/"),)


def is_known(method: str, path: str) -> bool:
    """True for a route Claude Code is known to call (the query string is ignored)."""
    route = path.split("?", 1)[0]
    if (method, route) in KNOWN_ROUTES:
        return True
    return any(method == m and route.startswith(prefix) for m, prefix in KNOWN_PREFIXES)

