"""The viewer's door: a one-time sign-in link sets a cookie that is not the token, bound to the
viewer's port; the link works once, within an hour; nothing else gets in."""

import stat
import threading
from email.message import Message

import pytest

from opik_cipx.views.access import (
    DENIED,
    SPENT,
    TOKEN_FILE,
    ViewerAccess,
    cookie_name,
    new_token,
    read_token,
    sign_in_url,
)
from opik_cipx.views.sign_in import LINK_TTL_S, LINKS_DIR, MAX_LINKS, SignInLinks
from tests.claude_code_corpus import corpus_now_ns
from tests.conftest import DaemonProcess
from tests.fake_clock import FakeClock

TOKEN = new_token()
PORT = 8765


def headers(*cookies: str) -> Message:
    msg = Message()
    for cookie in cookies:
        msg["Cookie"] = cookie
    return msg


@pytest.fixture
def clock():
    return FakeClock(corpus_now_ns())


@pytest.fixture
def links(tmp_path, clock):
    return SignInLinks(tmp_path, clock)


def signed_in_cookie(links: SignInLinks, port: int = PORT, token: str = TOKEN) -> str:
    """`name=value` of the cookie a sign-in on `port` sets."""
    answer = ViewerAccess(token, links).check(f"/?signin={links.issue()}", headers(), port)
    name_value, _, attributes = dict(answer.headers)["Set-Cookie"].partition("; ")
    assert attributes == "Path=/; HttpOnly; SameSite=Strict"
    return name_value


def test_a_link_signs_in_once_and_moves_on_to_the_clean_url(links):
    access = ViewerAccess(TOKEN, links)
    code = links.issue()
    answer = access.check(f"/capture/abc?signin={code}&x=1", headers(), PORT)
    assert answer.status == 200
    cookie = dict(answer.headers)["Set-Cookie"]
    assert cookie == f"{signed_in_cookie(links)}; Path=/; HttpOnly; SameSite=Strict"
    assert dict(answer.headers)["Referrer-Policy"] == "no-referrer"
    assert b'http-equiv=refresh content="0; url=/capture/abc?x=1"' in answer.body
    assert code.encode() not in answer.body  # the page itself never repeats the link
    again = access.check(f"/capture/abc?signin={code}&x=1", headers(), PORT)  # the same link, a second time
    assert (again.status, again.body) == (403, SPENT.encode())
    assert b"Run `opik-cipx viewer` for a new one" in again.body and again.body.count(b"\n") == 1
    bare = access.check(sign_in_url(PORT, links.issue()).split(str(PORT), 1)[1], headers(), PORT)
    assert b'url=/"' in bare.body
    for elsewhere in ("//evil.com/", "/\\evil.com", "http://evil.com/"):
        onward = access.check(f"{elsewhere}?signin={links.issue()}", headers(), PORT)
        assert b'url=/"' in onward.body, elsewhere


def test_of_many_requests_with_one_link_exactly_one_gets_in(links):
    access = ViewerAccess(TOKEN, links)
    code = links.issue()
    start, answers = threading.Barrier(8), []

    def use() -> None:
        start.wait()
        answers.append(access.check(f"/?signin={code}", headers(), PORT).status)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == [200] + [403] * 7


def test_a_link_expires_after_an_hour_and_the_directory_stays_small(links, clock, tmp_path):
    access = ViewerAccess(TOKEN, links)
    late = links.issue()
    clock.advance(LINK_TTL_S - 1)
    fresh = links.issue()
    clock.advance(2)
    assert access.check(f"/?signin={late}", headers(), PORT).status == 403  # an hour and a second old
    assert access.check(f"/?signin={fresh}", headers(), PORT).status == 200
    for _ in range(3 * MAX_LINKS):
        links.issue()
    directory = tmp_path / LINKS_DIR
    names = [p.name for p in directory.iterdir()]
    assert len(names) == MAX_LINKS and all(len(n) == 64 for n in names)  # digests: the codes are nowhere
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in directory.iterdir())


def test_a_signed_in_browser_opening_a_spent_link_is_sent_on(links):
    access = ViewerAccess(TOKEN, links)
    code = links.issue()
    cookie = signed_in_cookie(links)
    assert access.check(f"/?signin={code}", headers(cookie), PORT).status == 200  # redeemed alongside
    again = access.check(f"/calls?signin={code}", headers(cookie), PORT)  # from the browser's history
    assert again.status == 200 and b'url=/calls"' in again.body


def test_the_cookie_is_not_the_token_and_cannot_be_turned_into_it(links):
    name, _, value = signed_in_cookie(links).partition("=")
    assert name == cookie_name(PORT)
    assert TOKEN not in value and value not in TOKEN and len(value) >= 43
    assert value == signed_in_cookie(links).partition("=")[2]  # the same for every sign-in: restarts keep it
    assert value != signed_in_cookie(links, token=new_token()).partition("=")[2]  # a new token signs everyone out
    assert value != signed_in_cookie(links, PORT + 1).partition("=")[2]


def test_the_cookie_admits_and_anything_else_is_403(links):
    access = ViewerAccess(TOKEN, links)
    name = cookie_name(PORT)
    cookie = signed_in_cookie(links)
    value = cookie.partition("=")[2]
    assert access.check("/api/calls", headers(f"theme=dark; {cookie}"), PORT) is None
    assert access.check("/", headers("a=b", cookie), PORT) is None  # a second Cookie header
    elsewhere = signed_in_cookie(links, PORT + 1)  # what a browser signed in on another port sends there
    code = links.issue()
    for refused, body in [
        (access.check("/api/calls", headers(), PORT), DENIED),
        (access.check("/api/calls", headers(f"{name}={TOKEN}"), PORT), DENIED),  # the token itself is no cookie
        (access.check("/api/calls", headers(f"{name}={value[:-1]}x"), PORT), DENIED),
        (access.check("/api/calls", headers(elsewhere), PORT), DENIED),  # another port's cookie...
        (access.check("/api/calls", headers(f"{name}={elsewhere.partition('=')[2]}"), PORT), DENIED),  # ...any name
        (access.check("/api/calls", headers(f"{name}="), PORT), DENIED),
        (access.check(f"/?token={TOKEN}", headers(), PORT), SPENT),  # the token is no link (older versions' URL)
        (access.check(f"/?signin={code}x", headers(), PORT), SPENT),
        (access.check("/?signin=", headers(), PORT), SPENT),
        (access.check(f"/?signin={code}&signin={code}", headers(), PORT), SPENT),
        (access.check(f"/?signin={code}&token={TOKEN}", headers(), PORT), SPENT),
        (access.check("/?signin=%FF%FE", headers(), PORT), SPENT),
        (access.check("/?signin=../../viewer.token", headers(), PORT), SPENT),
    ]:
        assert (refused.status, refused.body) == (403, body.encode())
        assert b"Run `opik-cipx viewer`" in refused.body and refused.body.count(b"\n") == 1
    assert access.check(f"/?signin={code}", headers(), PORT).status == 200  # none of those spent it


def test_read_token_wants_a_private_well_formed_file(tmp_path):
    assert read_token(tmp_path) is None
    (tmp_path / TOKEN_FILE).write_text("short\n")
    assert read_token(tmp_path) is None
    (tmp_path / TOKEN_FILE).write_text(TOKEN + "\n")
    assert read_token(tmp_path) == TOKEN


def test_the_daemon_keeps_its_token_private_and_across_restarts(home, upstream):
    """The token a start finds (the one the last start made, set up here on disk: the first start
    making a private one is tests/test_daemon.py::test_state_files_are_private_and_state_json_is_the_handshake)
    is the one it keeps, still private: a signed-in browser stays signed in."""
    token = new_token()
    home.mkdir(parents=True, mode=0o700)
    (home / TOKEN_FILE).write_text(token + "\n")
    (home / TOKEN_FILE).chmod(0o600)
    assert read_token(home) == token  # as the daemon writes it
    daemon = DaemonProcess(home, upstream.url)
    try:
        assert read_token(home) == token
        assert stat.S_IMODE((home / TOKEN_FILE).stat().st_mode) == 0o600
    finally:
        assert daemon.stop() == 0
