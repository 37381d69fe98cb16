"""Access control: the bind rule, the access token, the login cookie, CSRF.

* Binding: the app never binds itself; whoever serves it calls
  `check_bind(host, token)` first, which refuses a non-loopback address
  without a token.
* With a token, every endpoint but /healthz, the login form and static
  files needs `Authorization: Bearer <token>` or the session cookie the
  login form sets (signed with a key derived from the token, so changing
  the token logs everyone out). Pages redirect to the form; the rest
  answers 401 with a JSON reason.
* Without a token (loopback only), requests must name a loopback host:
  a web page elsewhere cannot reach the UI through DNS rebinding.
* Every state-changing request (POST and friends) carries the CSRF token
  of the session (form field `csrf` or header `X-CSRF-Token`) and, when the
  browser sends one, a same-origin `Origin`; a request authenticated by the
  bearer header needs neither, as browsers never add that header by
  themselves.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from datetime import timedelta
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response as BaseResponse

from profiler.errors import KilnError
from web.errors import json_error
from web.state import web_state

MIN_REMOTE_TOKEN_LEN = 16
SESSION_LIFETIME = timedelta(hours=12)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Reachable without logging in: nothing here shows profile data.
PUBLIC_ENDPOINTS = frozenset({"metrics.healthz", "auth.login", "static"})
PAGE_ENDPOINTS = frozenset({"pages.index", "pages.agent"})

bp = Blueprint("auth", __name__)


class BindError(KilnError):
    """The UI would be reachable from other hosts without an access token."""


def is_loopback(host: str) -> bool:
    """True for `localhost`, 127.0.0.0/8 and ::1 (with or without brackets)."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Raise BindError unless listening on `host` is safe with `token`."""
    if is_loopback(host):
        return
    shown = host or "all interfaces"
    if not token:
        raise BindError(
            f"refusing to serve the web UI on {shown}: it would show every process's "
            "profile to the network without an access token",
            "configure an access token for the web UI, or listen on 127.0.0.1",
        )
    if len(token) < MIN_REMOTE_TOKEN_LEN:
        raise BindError(
            f"the web UI access token is too short to expose on {shown}",
            f"use at least {MIN_REMOTE_TOKEN_LEN} random characters "
            "(for example the output of `openssl rand -hex 16`)",
        )


def session_key(token: str | None) -> bytes:
    """The cookie signing key: derived from the token, random without one."""
    if token is None:
        return secrets.token_bytes(32)
    return hmac.new(token.encode(), b"kiln web session v1", hashlib.sha256).digest()


def install(app: Flask) -> None:
    app.config.update(
        SESSION_COOKIE_NAME="kiln_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
    )
    app.before_request(_guard)
    app.register_blueprint(bp)


def csrf_token() -> str:
    """This session's CSRF token, created on first use."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _bearer_ok(token: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode(), token.encode()
    )


def _session_ok(token: str) -> bool:
    return session.get("auth") == _fingerprint(token)


def _fingerprint(token: str) -> str:
    return hashlib.sha256(b"kiln login " + token.encode()).hexdigest()[:32]


def _same_origin() -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser fetch/form from another origin
    return urlsplit(origin).netloc == request.host


def _csrf_ok() -> bool:
    sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf", "")
    expected = session.get("csrf")
    return (
        isinstance(expected, str)
        and bool(sent)
        and hmac.compare_digest(sent.encode(), expected.encode())
        and _same_origin()
    )


def _guard() -> BaseResponse | None:
    state = web_state()
    endpoint = request.endpoint or ""
    if (
        state.token is None
        and endpoint != "metrics.healthz"
        and not is_loopback(_host_name(request.host))
    ):
        return json_error(
            403,
            f"host {request.host!r} refused: without an access token Kiln answers only "
            "to loopback names (localhost, 127.0.0.1, [::1])",
        )
    bearer = state.token is not None and _bearer_ok(state.token)
    if (
        state.token is not None
        and endpoint not in PUBLIC_ENDPOINTS
        and not (bearer or _session_ok(state.token))
    ):
        if endpoint in PAGE_ENDPOINTS and request.method in SAFE_METHODS:
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        response = json_error(
            401, "authentication required: log in or send 'Authorization: Bearer <token>'"
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="kiln"'
        return response
    if request.method not in SAFE_METHODS and not bearer and not _csrf_ok():
        return json_error(403, "CSRF check failed: reload the page and try again")
    return None


def _safe_next(target: str | None) -> str:
    """Only a path on this site, so the form cannot redirect elsewhere."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


@bp.route("/login", methods=["GET", "POST"])
def login() -> BaseResponse | tuple[str, int] | str:
    state = web_state()
    target = _safe_next(request.values.get("next"))
    if state.token is None:
        return redirect(target)
    if request.method == "POST":
        given = request.form.get("token", "")
        if hmac.compare_digest(given.encode(), state.token.encode()):
            session.clear()
            session.permanent = True
            session["auth"] = _fingerprint(state.token)
            csrf_token()
            return redirect(target)
        return render_template("login.html", next=target, error="Wrong token."), 401
    return render_template("login.html", next=target, error="")


@bp.post("/logout")
def logout() -> Response | BaseResponse:
    session.clear()
    return redirect(url_for("auth.login"))
