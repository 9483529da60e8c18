"""URLs fit to show: in logs, stats and records a URL never carries the `user:password@` it was given."""


def strip_credentials(url: str) -> str:
    """`https://user:token@host:8080/x?y` -> `https://host:8080/x?y`: the authority's userinfo removed,
    everything else kept as written. A string without `://` (scp-style `git@host:x`) is returned as is.

    The authority ends at the first `/`, `?` or `#` (RFC 3986), so an `@` in a path or query stays.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    return f"{scheme}://{rest[:end].rpartition('@')[2]}{rest[end:]}"
