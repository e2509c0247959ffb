"""Error responses: JSON ``{"detail": ...}`` under ``/api/``, an HTML page elsewhere."""

from __future__ import annotations

from flask import Flask, Response, current_app, jsonify, make_response, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from .extensions import db

MESSAGES = {
    400: "Bad request",
    401: "Not signed in",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    413: "Request too large",
    429: "Too many requests",
    500: "Internal server error",
}


def error_response(status: int, detail: str, headers: dict | None = None) -> Response:
    if request.path.startswith("/api/"):
        response = jsonify(detail=detail)
        response.status_code = status
    else:
        title = MESSAGES.get(status, "Error")
        page = render_template("error.html", status=status, title=title, detail=detail)
        response = make_response(page, status)
    response.headers.update(headers or {})
    return response


def handle_http_error(error: HTTPException) -> Response:
    status = error.code or 500
    detail = MESSAGES.get(status, error.name)
    # A 400/422 raised with a description says what was wrong: pass it on.
    if status in (400, 422) and error.description != type(error).description:
        detail = error.description
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if status == 413 and limit:
        detail = f"Request too large: a body may be at most {limit // 2**20} MiB"
    headers = {k: v for k, v in error.get_headers() if k == "Allow"}
    return error_response(status, detail, headers)


def handle_csrf_error(error: CSRFError) -> Response:
    return error_response(400, "The form expired or was not sent from this site; please try again.")


def handle_unexpected(error: Exception) -> Response:
    # The operator's log gets the traceback; the user gets a plain message.
    current_app.logger.exception("Unhandled error on %s %s", request.method, request.path)
    # A failed statement leaves the session unusable; the error page may read the signed-in user.
    db.session.rollback()
    return error_response(500, MESSAGES[500])


def init_app(app: Flask) -> None:
    app.register_error_handler(CSRFError, handle_csrf_error)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(Exception, handle_unexpected)
