"""Errors as JSON answers with a reason, registered once on the app.

Bad parameters are 400, a store that cannot answer (newer schema, corrupt,
locked) is 503, unknown paths 404; anything unexpected is logged with its
traceback and answered with a short JSON 500, never an HTML error page.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from profiler.store.api import StoreError
from web.params import ParamError

log = logging.getLogger("kiln.web")


def json_error(status: int, reason: str, **extra: Any) -> Response:
    response = jsonify({"error": reason, **extra})
    response.status_code = status
    return response


def install(app: Flask) -> None:
    @app.errorhandler(ParamError)
    def bad_param(e: ParamError) -> Response:
        log.info("refused %s: %s", request.path, e)
        return json_error(400, f"bad parameter {e.param}: {e.reason}", param=e.param)

    @app.errorhandler(StoreError)
    def store_error(e: StoreError) -> Response:
        log.warning("store error on %s: %s", request.path, e)
        return json_error(503, f"the profile store cannot answer: {e}", source="store")

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> Response:
        return json_error(e.code or 500, e.description or e.name)

    @app.errorhandler(Exception)
    def unexpected(e: Exception) -> Response:
        log.exception("unexpected error on %s", request.path)
        return json_error(500, f"internal error ({type(e).__name__}); the agent log has details")
