"""Access token, login cookie, CSRF, DNS-rebinding and bind checks."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.web.conftest import TOKEN, AppFactory
from web import BindError, check_bind
from web.auth import is_loopback

PROTECTED = [
    "/",
    "/agent",
    "/api/flame",
    "/api/top",
    "/api/sandwich?function=f",
    "/api/diff",
    "/api/timeline",
    "/api/labels/pid",
    "/api/agent",
    "/download/pprof",
    "/download/folded",
    "/metrics",
]


@pytest.fixture(scope="module")
def locked(make_app: AppFactory) -> Flask:
    return make_app(token=TOKEN)


def csrf_of(client: FlaskClient, url: str = "/login") -> str:
    html = client.get(url).get_data(as_text=True)
    m = re.search(r'name="csrf(?:-token)?" (?:value|content)="([^"]+)"', html)
    assert m, html
    return m.group(1)


@pytest.mark.parametrize("url", PROTECTED)
def test_everything_but_healthz_needs_the_token(locked: Flask, url: str) -> None:
    client = locked.test_client()
    r = client.get(url)
    if url in ("/", "/agent"):
        assert r.status_code == 302
        assert r.headers["Location"].startswith("/login?next=")
    else:
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="kiln"'
        assert "authentication required" in r.get_json()["error"]
    ok = client.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200, ok.get_data(as_text=True)[:300]
    wrong = client.get(url, headers={"Authorization": f"Bearer {TOKEN}x"})
    assert wrong.status_code in (302, 401)


def test_healthz_and_static_are_open(locked: Flask) -> None:
    client = locked.test_client()
    assert client.get("/healthz").get_json() == {"status": "ok"}
    r = client.get("/static/kiln.css")
    assert r.status_code == 200
    r.close()
    assert client.get("/login").status_code == 200


def test_login_form_sets_a_cookie(locked: Flask) -> None:
    client = locked.test_client()
    csrf = csrf_of(client)
    r = client.post(
        "/login",
        data={"csrf": csrf, "token": TOKEN, "next": "/api/agent"},
        headers={"Origin": "http://localhost"},
    )
    assert r.status_code == 302 and r.headers["Location"] == "/api/agent"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get("/api/flame").status_code == 200
    assert client.get("/").status_code == 200
    # Log out (a POST, so CSRF again) and the cookie no longer works.
    page_csrf = csrf_of(client, "/")
    assert client.post("/logout", data={"csrf": page_csrf}).status_code == 302
    assert client.get("/api/flame").status_code == 401


def test_wrong_token_at_login(locked: Flask) -> None:
    client = locked.test_client()
    r = client.post("/login", data={"csrf": csrf_of(client), "token": "guess"})
    assert r.status_code == 401
    assert "Wrong token." in r.get_data(as_text=True)
    assert client.get("/api/flame").status_code == 401


def test_login_needs_csrf(locked: Flask) -> None:
    client = locked.test_client()
    csrf_of(client)
    for data in ({"token": TOKEN}, {"token": TOKEN, "csrf": "forged"}):
        r = client.post("/login", data=data)
        assert r.status_code == 403 and "CSRF" in r.get_json()["error"]
    r = client.post(
        "/login",
        data={"token": TOKEN, "csrf": csrf_of(client)},
        headers={"Origin": "http://evil.example"},
    )
    assert r.status_code == 403
    assert client.get("/api/flame").status_code == 401


def test_login_redirects_only_within_the_site(locked: Flask) -> None:
    for target, expected in (
        ("//evil.example/x", "/"),
        ("https://evil.example", "/"),
        ("/\\evil", "/"),
        ("/agent?x=1", "/agent?x=1"),
    ):
        client = locked.test_client()
        r = client.post("/login", data={"csrf": csrf_of(client), "token": TOKEN, "next": target})
        assert r.headers["Location"] == expected


def test_cookie_of_another_token_is_refused(make_app: AppFactory, locked: Flask) -> None:
    client = locked.test_client()
    client.post("/login", data={"csrf": csrf_of(client), "token": TOKEN})
    assert client.get("/api/flame").status_code == 200
    rotated = make_app(token=TOKEN + "-rotated")
    cookie = client.get_cookie("kiln_session")
    assert cookie is not None
    other = rotated.test_client()
    other.set_cookie("kiln_session", cookie.value)
    assert other.get("/api/flame").status_code == 401


def test_post_needs_csrf_even_without_token(client: FlaskClient) -> None:
    assert client.post("/logout").status_code == 403
    csrf = csrf_of(client, "/")
    assert client.post("/logout", data={"csrf": csrf}).status_code == 302
    assert client.post("/logout", headers={"X-CSRF-Token": csrf_of(client, "/")}).status_code == 302


def test_bearer_posts_need_no_csrf(locked: Flask) -> None:
    client = locked.test_client()
    r = client.post("/logout", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 302


def test_without_token_only_loopback_host_names(client: FlaskClient) -> None:
    assert client.get("/api/flame", base_url="http://127.0.0.1:7070").status_code == 200
    assert client.get("/api/flame", base_url="http://[::1]:7070").status_code == 200
    r = client.get("/api/flame", base_url="http://rebound.example:7070")
    assert r.status_code == 403 and "loopback" in r.get_json()["error"]
    assert client.get("/healthz", base_url="http://rebound.example").status_code == 200


def test_with_token_any_host_name(locked: Flask) -> None:
    r = locked.test_client().get(
        "/api/flame",
        base_url="http://kiln.example:7070",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert r.status_code == 200


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", ""])
def test_check_bind_loopback(host: str) -> None:
    if host == "":
        with pytest.raises(BindError, match="all interfaces"):
            check_bind(host, None)
    else:
        check_bind(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "kiln.example"])
def test_check_bind_remote(host: str) -> None:
    with pytest.raises(BindError) as e:
        check_bind(host, None)
    assert "without an access token" in str(e.value) and "fix:" in str(e.value)
    with pytest.raises(BindError, match="too short"):
        check_bind(host, "short")
    check_bind(host, TOKEN)


def test_is_loopback() -> None:
    assert is_loopback("LOCALHOST") and is_loopback("app.localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("localhost.evil.example") and not is_loopback("10.0.0.1")


def test_templates_escape(locked: Flask) -> None:
    html = locked.test_client().get('/login?next=/"><script>alert(1)</script>').get_data(True)
    assert "<script>alert(1)" not in html
    assert "&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in html
