"""`create_app`: the Flask app of Kiln's web UI, over any ProfileSource.

The app does not bind a socket; the daemon serves it and must call
`web.auth.check_bind(host, token)` first. Every response carries a strict
Content-Security-Policy: scripts only from this origin (no inline script),
styles from this origin plus the one <style> d3-flame-graph injects,
allowed by its hash (see web/vendor.sh).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, Response

from profiler.store.api import ProfileSource
from web import api, auth, downloads, errors, metrics, pages
from web.profile_cache import ProfileCache
from web.state import EXTENSION, Vendor, WebState

log = logging.getLogger("kiln.web")

_STATIC_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes Chromium send Origin: null
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def content_security_policy(vendor: Vendor) -> str:
    styles = " ".join(["'self'", *(f"'{h}'" for h in vendor.style_hashes)])
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            f"style-src {styles}",
            "img-src 'self'",
            "connect-src 'self'",
            "form-action 'self'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ]
    )


def create_app(
    source: ProfileSource,
    *,
    token: str | None,
    agent_status: Callable[[], Mapping[str, Any]] | None,
    clock_ns: Callable[[], int] = time.time_ns,
) -> Flask:
    """The web UI over `source`. `token` (None or empty: no authentication,
    loopback only) protects everything but /healthz; `agent_status` feeds the
    agent page and /metrics (see web.agent_status); `clock_ns` is the
    wall clock that relative times like `now-1h` are measured from."""
    token = token or None
    app = Flask(__name__)
    app.config["SECRET_KEY"] = auth.session_key(token)
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024  # only the login form posts
    app.json.sort_keys = False  # type: ignore[attr-defined]  # trees are already ordered
    app.json.compact = True  # type: ignore[attr-defined]
    vendor = Vendor.load()
    if vendor.missing:
        log.warning("web UI: vendored JavaScript is missing; run web/vendor.sh")
    app.extensions[EXTENSION] = WebState(
        source=source,
        token=token,
        agent_status=agent_status,
        clock_ns=clock_ns,
        cache=ProfileCache(clock_ns),
        vendor=vendor,
    )
    app.jinja_env.globals.update(csrf_token=auth.csrf_token, vendor=vendor, auth=token is not None)
    errors.install(app)
    auth.install(app)
    for blueprint in (pages.bp, api.bp, downloads.bp, metrics.bp):
        app.register_blueprint(blueprint)

    csp = content_security_policy(vendor)

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = csp
        for key, value in _STATIC_HEADERS.items():
            response.headers.setdefault(key, value)
        if not response.headers.get("Cache-Control"):
            response.headers["Cache-Control"] = "no-store"
        return response

    return app
