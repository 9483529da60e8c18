"""Strict Host parsing: exactly one Host header, `host[:port]`, loopback names only."""

import http.client
import io

from hypothesis import given
from hypothesis import strategies as st

from opik_cipx.wire.loopback import loopback_host

NAMES = ["localhost", "LocalHost", "127.0.0.1", "[::1]"]


def hosts(raw: bytes) -> list[str] | None:
    """The Host values as the handler sees them, from raw header lines."""
    return http.client.parse_headers(io.BytesIO(raw + b"\r\n")).get_all("Host")


def test_accepted():
    for name in NAMES:
        assert loopback_host([name])
        assert loopback_host([f"{name}:9909"])
        assert loopback_host([f" {name}:1\t"])  # optional whitespace around a header value
    assert loopback_host(hosts(b"Host: 127.0.0.1:9909\r\n"))
    assert loopback_host(hosts(b"host: localhost:9909\r\n"))


def test_refused_the_issues_examples_and_more():
    for value in [
        "localhost:9909@evil", "localhost:x@evil.com", "evil.com", "127.0.0.1.nip.io", "localhost.evil",
        "user@localhost", "localhost:", "localhost:9909:1", "localhost:99999", "localhost:0", "localhost :9909",
        "local host", "127.0.0.2", "127.1", "2130706433", "0x7f.0.0.1", "::1", "[::1", "[::ffff:127.0.0.1]",
        "localhost.", "", "localhost\r\n evil.com", "localhost/evil", "localhost#", "localhost:+9909",
        "localhost:٩٩٠٩",  # non-ASCII digits
    ]:
        assert not loopback_host([value]), value
    assert not loopback_host(None)
    assert not loopback_host([])
    assert not loopback_host(hosts(b"Host: 127.0.0.1\r\nHost: evil.com\r\n"))  # two Host headers
    assert not loopback_host(hosts(b"Host: 127.0.0.1\r\nHost: 127.0.0.1\r\n"))  # even two loopback ones
    assert not loopback_host(hosts(b"Host: localhost\r\n evil.com\r\n"))  # folded continuation
    assert not loopback_host(hosts(b"X: y\r\n"))


hostile_host = st.one_of(
    st.builds(lambda n, junk: n + junk, st.sampled_from(NAMES + [n + ":9909" for n in NAMES]),
              st.text(alphabet="@:/ \t.#?[]%\\\r\nxé0", min_size=1, max_size=8)),
    st.builds(lambda junk, n: junk + n, st.text(alphabet="@:/ .x[", min_size=1, max_size=6).filter(
        lambda s: s.strip(" \t")), st.sampled_from(NAMES)),
    st.builds(lambda user, n: f"{user}@{n}", st.text(max_size=8), st.sampled_from(NAMES)),
)


@given(hostile_host)
def test_hostile_values_around_a_loopback_name_are_refused(value):
    stripped = value.strip(" \t")
    name, _, port = stripped.rpartition(":") if not stripped.endswith("]") else (stripped, "", "")
    plain = stripped in NAMES or stripped.lower() in ("localhost",)
    with_port = name.lower() in ("localhost", "127.0.0.1", "[::1]") and port.isascii() and port.isdigit() \
        and 0 < int(port) < 65536 and len(port) <= 5
    assert loopback_host([value]) == (plain or with_port)


@given(st.lists(st.sampled_from(NAMES + ["evil.com", "127.0.0.1:9909"]), min_size=2, max_size=4))
def test_more_than_one_host_header_is_always_refused(values):
    assert not loopback_host(values)
