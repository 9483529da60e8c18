"""The viewer token: a `?token=` URL signs a browser in with a cookie that is not the token, bound to
the viewer's port; nothing else gets in."""

import stat
from email.message import Message

from opik_cipx.views.access import TOKEN_FILE, ViewerAccess, cookie_name, new_token, read_token, viewer_url
from tests.conftest import DaemonProcess

TOKEN = new_token()
PORT = 8765


def headers(*cookies: str) -> Message:
    msg = Message()
    for cookie in cookies:
        msg["Cookie"] = cookie
    return msg


def signed_in_cookie(port: int = PORT, token: str = TOKEN) -> str:
    """`name=value` of the cookie a sign-in on `port` sets."""
    answer = ViewerAccess(token).check(f"/?token={token}", headers(), port)
    name_value, _, attributes = dict(answer.headers)["Set-Cookie"].partition("; ")
    assert attributes == "Path=/; HttpOnly; SameSite=Strict"
    return name_value


def test_the_token_url_signs_in_and_moves_on_to_the_clean_url():
    answer = ViewerAccess(TOKEN).check(f"/capture/abc?token={TOKEN}&x=1", headers(), PORT)
    assert answer.status == 200
    cookie = dict(answer.headers)["Set-Cookie"]
    assert cookie == f"{signed_in_cookie()}; Path=/; HttpOnly; SameSite=Strict"
    assert dict(answer.headers)["Referrer-Policy"] == "no-referrer"
    assert b'http-equiv=refresh content="0; url=/capture/abc?x=1"' in answer.body
    assert TOKEN.encode() not in answer.body  # the page itself never repeats the token
    bare = ViewerAccess(TOKEN).check(viewer_url(PORT, TOKEN).split(str(PORT), 1)[1], headers(), PORT)
    assert b'url=/"' in bare.body
    for elsewhere in ("//evil.com/", "/\\evil.com", "http://evil.com/"):
        onward = ViewerAccess(TOKEN).check(f"{elsewhere}?token={TOKEN}", headers(), PORT)
        assert b'url=/"' in onward.body, elsewhere


def test_the_cookie_is_not_the_token_and_cannot_be_turned_into_it():
    name, _, value = signed_in_cookie().partition("=")
    assert name == cookie_name(PORT)
    assert TOKEN not in value and value not in TOKEN and len(value) >= 43
    assert value == signed_in_cookie().partition("=")[2]  # the same for every sign-in: restarts keep it
    assert value != signed_in_cookie(token=new_token()).partition("=")[2]  # a new token signs everyone out
    assert value != signed_in_cookie(PORT + 1).partition("=")[2]


def test_the_cookie_admits_and_anything_else_is_403():
    access = ViewerAccess(TOKEN)
    name = cookie_name(PORT)
    cookie = signed_in_cookie()
    value = cookie.partition("=")[2]
    assert access.check("/api/calls", headers(f"theme=dark; {cookie}"), PORT) is None
    assert access.check("/", headers("a=b", cookie), PORT) is None  # a second Cookie header
    elsewhere = signed_in_cookie(PORT + 1)  # what a browser signed in on another port sends there
    for refused in [
        access.check("/api/calls", headers(), PORT),
        access.check("/api/calls", headers(f"{name}={TOKEN}"), PORT),  # the token itself is no cookie
        access.check("/api/calls", headers(f"{name}={value[:-1]}x"), PORT),
        access.check("/api/calls", headers(elsewhere), PORT),  # another port's cookie...
        access.check("/api/calls", headers(f"{name}={elsewhere.partition('=')[2]}"), PORT),  # ...under any name
        access.check("/api/calls", headers(f"{name}="), PORT),
        access.check(f"/?token={TOKEN}x", headers(), PORT),
        access.check("/?token=", headers(cookie), PORT),  # a wrong token is refused, cookie or not
        access.check(f"/?token={TOKEN}&token={TOKEN}", headers(), PORT),
        access.check("/?token=%FF%FE", headers(), PORT),
    ]:
        assert refused.status == 403
        assert b"Run `opik-cipx viewer`" in refused.body and refused.body.count(b"\n") == 1


def test_read_token_wants_a_private_well_formed_file(tmp_path):
    assert read_token(tmp_path) is None
    (tmp_path / TOKEN_FILE).write_text("short\n")
    assert read_token(tmp_path) is None
    (tmp_path / TOKEN_FILE).write_text(TOKEN + "\n")
    assert read_token(tmp_path) == TOKEN


def test_the_daemon_keeps_its_token_private_and_across_restarts(home, upstream):
    first = DaemonProcess(home, upstream.url)
    try:
        assert stat.S_IMODE((home / TOKEN_FILE).stat().st_mode) == 0o600
        token = read_token(home)
        assert token and len(token) >= 43
    finally:
        assert first.stop() == 0
    again = DaemonProcess(home, upstream.url)
    try:
        assert read_token(home) == token  # a signed-in browser stays signed in
    finally:
        again.stop()
