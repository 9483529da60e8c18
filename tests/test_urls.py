"""Credentials never shown: one function strips a URL's `user:password@` for every place that shows a URL."""

from hypothesis import given
from hypothesis import strategies as st

from opik_cipx.config import parse_sentry_dsn
from opik_cipx.urls import strip_credentials


def test_examples():
    assert strip_credentials("https://user:token@host:8080/x?y=1#z") == "https://host:8080/x?y=1#z"
    assert strip_credentials("http://proxy:3128") == "http://proxy:3128"
    assert strip_credentials("http://u:p@proxy:3128") == "http://proxy:3128"
    assert strip_credentials("ssh://git@host:22/x.git") == "ssh://host:22/x.git"
    assert strip_credentials("git@github.com:acme/api.git") == "git@github.com:acme/api.git"  # scp-style: no authority
    # an @ after the authority stays
    assert strip_credentials("https://host/path@x?q=a@b") == "https://host/path@x?q=a@b"
    assert strip_credentials("https://host?q=a@b") == "https://host?q=a@b"
    assert strip_credentials("https://a@b@host/x") == "https://host/x"  # the last @ ends the userinfo
    assert strip_credentials("") == ""


def test_every_place_that_shows_a_url_uses_it():
    dsn = parse_sentry_dsn("https://publickey@o1.ingest.example.io/prefix/42")
    assert dsn.envelope_url == "https://o1.ingest.example.io/prefix/api/42/envelope/" and dsn.public_key == "publickey"


SECRET = "s3cr3t"
hosts = st.from_regex(r"[a-z0-9.-]{1,20}(:[0-9]{1,5})?", fullmatch=True)
tails = st.from_regex(r"([/?#][ -~]{0,30})?", fullmatch=True)


@given(st.sampled_from(["http", "https", "ssh"]), st.sampled_from(["", "user@", f"user:{SECRET}@", f"{SECRET}@"]),
       hosts, tails)
def test_the_userinfo_goes_and_everything_else_stays(scheme, userinfo, host, tail):
    stripped = strip_credentials(f"{scheme}://{userinfo}{host}{tail}")
    assert stripped == f"{scheme}://{host}{tail}"
    assert strip_credentials(stripped) == stripped
