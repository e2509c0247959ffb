"""Metering your own API with Tollgate: your service checks each caller's key with Tollgate
(``POST /api/v1/verify``, with a service token) and reports the call once it is answered
(``POST /api/v1/verify/{callId}/complete``).

:class:`TollgateVerifier` makes those two calls; :class:`TollgateMiddleware` (WSGI) and
:class:`TollgateASGIMiddleware` (ASGI 3) make them around every protected request. A refused
call is answered by the middleware (Tollgate's status and detail, its rate-limit headers and
``Retry-After``); an admitted one reaches the app with a :class:`TollgateCall` to report its
usage on, gets the rate-limit headers added, and is completed with its status, duration and
usage once its response is done.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

import requests

from .client import DEFAULT_BASE_URL, VERSION, _detail
from .errors import AuthenticationError, ConnectionFailed, InvalidRequest, TollgateError, error_for
from .usage import MAX_MODEL_LENGTH, USAGE_HEADER, Usage, usage_from_header, usage_of

log = logging.getLogger("tollgate_client")

# The contract's limits: a longer endpoint is cut, a longer key is no key, a longer end user
# is refused (as Tollgate's own API does).
MAX_END_USER_LENGTH = 120
MAX_ENDPOINT_LENGTH = 255
MAX_KEY_LENGTH = 200
MAX_ERROR_MESSAGE = 2000
MISSING_KEY_DETAIL = "Missing API key"
INVALID_KEY_DETAIL = "Invalid API key"
UNAVAILABLE_DETAIL = "Usage service unavailable"
# The status of a refusal whose answer named none, by its code.
STATUS_OF_CODE = {
    "INVALID_KEY": 401,
    "INACTIVE_KEY": 403,
    "RATE_LIMITED": 429,
    "QUOTA_EXCEEDED": 429,
    "BUDGET_EXCEEDED": 402,
    "PLAN_EXCLUDES": 403,
}
# The status a call is completed with when the client went away before any response started.
CLIENT_CLOSED = 499

Protect = Callable[[str], bool] | Iterable[str] | None
Units = int | Callable[[Mapping[str, Any]], int]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]
Headers = list[tuple[str, str]]


class ServiceTokenRejected(AuthenticationError):
    """401 from the verify API: the service token is unknown or revoked."""


# -- the verify API -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """Tollgate's answer to a verify.

    Valid: the key's ``tenant`` (slug), ``key_id``, ``plan``, the monthly quota ``remaining``
    (None: unlimited) and the ``call_id`` to complete. Refused: the ``code`` (``INVALID_KEY``,
    ``RATE_LIMITED``...), the ``status`` and ``detail`` to answer the caller with, and
    ``retry_after`` in seconds (None when waiting would not help). ``headers`` are the
    X-RateLimit-* headers to send the caller either way (empty when unknown).
    """

    valid: bool
    code: str | None = None
    status: int = 200
    detail: str = ""
    retry_after: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)
    call_id: str | None = None
    tenant: str | None = None
    key_id: int | None = None
    plan: str | None = None
    remaining: int | None = None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Verdict:
        """The verdict of a verify's JSON answer (unknown fields ignored)."""
        valid = body.get("valid") is True
        raw_headers = body.get("headers")
        headers = {str(k): str(v) for k, v in raw_headers.items()} if isinstance(raw_headers, Mapping) else {}
        code = body.get("code") if isinstance(body.get("code"), str) else None
        status = _int(body.get("status"))
        if status is None or not 100 <= status <= 599:
            status = 200 if valid else STATUS_OF_CODE.get(code or "", 403)
        retry_after = _int(body.get("retryAfter"))
        call_id = body.get("callId")
        return cls(
            valid=valid,
            code=code,
            status=status,
            detail=str(body.get("detail") or ""),
            retry_after=max(0, retry_after) if retry_after is not None else None,
            headers=headers,
            call_id=str(call_id) if call_id is not None else None,
            tenant=body.get("tenant") if isinstance(body.get("tenant"), str) else None,
            key_id=_int(body.get("keyId")),
            plan=body.get("plan") if isinstance(body.get("plan"), str) else None,
            remaining=_int(body.get("remaining")),
        )

    def response_headers(self) -> Headers:
        """The headers to send the caller: the rate-limit headers, and ``Retry-After`` when set."""
        headers = [(name, value) for name, value in self.headers.items() if name.lower() != "retry-after"]
        if self.retry_after is not None:
            headers.append(("Retry-After", str(self.retry_after)))
        return headers


class TollgateVerifier:
    """The verify API for one service token: :meth:`verify` a customer's key, then
    :meth:`complete` the call. Neither retries (a verify counts against the key's limits).

    Every failure raises a :class:`TollgateError`: :class:`ServiceTokenRejected` for a 401,
    :class:`ConnectionFailed` when Tollgate could not be reached or timed out, and the typed
    error of any other error status.
    """

    def __init__(
        self,
        service_token: str,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float | tuple[float, float] = 5.0,
        session: requests.Session | None = None,
    ) -> None:
        if not service_token:
            raise ValueError("a service token is required (flask create-service-token NAME makes one)")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.api_url = self.base_url + "/api/v1"
        self.timeout = timeout
        self._owns_session = session is None
        self.session = session if session is not None else requests.Session()
        self._headers = {
            "Authorization": f"Bearer {service_token}",
            "Accept": "application/json",
            "User-Agent": f"tollgate-client/{VERSION}",
        }

    def __repr__(self) -> str:
        return f"TollgateVerifier({self.base_url!r})"  # never the token

    def close(self) -> None:
        """Close the HTTP session, unless the caller passed it in."""
        if self._owns_session:
            self.session.close()

    def __enter__(self) -> TollgateVerifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _post(self, path: str, body: Mapping[str, Any]) -> requests.Response:
        url = f"{self.api_url}{path}"
        try:
            response = self.session.post(url, json=body, headers=self._headers, timeout=self.timeout)
        except requests.RequestException as exc:
            raise ConnectionFailed(f"POST {url} failed: {exc}") from exc
        if response.status_code == 401:
            raise ServiceTokenRejected(_detail(response), 401)
        return response

    def verify(
        self, key: str, endpoint: str, method: str = "GET", units: int = 1, end_user: str | None = None
    ) -> Verdict:
        """``POST /verify``: whether ``key`` may make this call now (it counts, when valid).
        ``endpoint`` gets a leading ``/`` if it lacks one and is cut to 255 characters."""
        if not endpoint.startswith("/"):
            endpoint = "/" + endpoint
        body: dict[str, Any] = {
            "key": key,
            "endpoint": endpoint[:MAX_ENDPOINT_LENGTH],
            "method": method.upper(),
            "units": units,
        }
        if end_user:
            body["endUser"] = end_user
        response = self._post("/verify", body)
        if response.status_code != 200:
            raise error_for(response.status_code, _detail(response))
        return Verdict.from_json(_json_object(response))

    def complete(
        self,
        call_id: str,
        status_code: int,
        duration_ms: int,
        tokens_in: int = 0,
        tokens_out: int = 0,
        cached_tokens: int = 0,
        model: str = "",
        units: int = 0,
        error_message: str = "",
    ) -> bool:
        """``POST /verify/{call_id}/complete``: report how the call went (``units``: what the
        service prices beside tokens). False when it was completed already (409)."""
        body: dict[str, Any] = {
            "status_code": status_code,
            "duration_ms": max(0, int(duration_ms)),
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "cached_tokens": cached_tokens,
            "model": model,
            "units": units,
        }
        if error_message:
            body["error_message"] = error_message[:MAX_ERROR_MESSAGE]
        response = self._post(f"/verify/{quote(call_id, safe='')}/complete", body)
        if response.status_code == 409:
            return False
        if response.status_code >= 400:
            raise error_for(response.status_code, _detail(response))
        return True


# -- one admitted call ----------------------------------------------------------------------------


class TollgateCall:
    """A call the middleware let through, as the app sees it (``environ["tollgate.call"]`` or
    ``scope["tollgate.call"]``): the :class:`Verdict` (None when Tollgate could not be reached
    and ``fail_open`` let the call through unmetered) and the usage the app reports.

    Report usage with :meth:`record`, :meth:`record_response`, or an ``X-Tollgate-Usage``
    response header (read and removed by the middleware); the latest report wins, field by
    field. Usage must be reported before the response ends: the call is completed then.
    """

    def __init__(self, verifier: TollgateVerifier, verdict: Verdict | None) -> None:
        self.verifier = verifier
        self.verdict = verdict
        #: The status the app answered with (None until it started its response).
        self.status_code: int | None = None
        #: True once the completion was sent (or, unmetered, would have been).
        self.completed = False
        self._usage: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"TollgateCall(call_id={self.call_id!r}, tenant={self.tenant!r})"

    @property
    def metered(self) -> bool:
        """Whether Tollgate admitted the call (False: let through unmetered by ``fail_open``)."""
        return self.verdict is not None and self.verdict.call_id is not None

    @property
    def call_id(self) -> str | None:
        return self.verdict.call_id if self.verdict else None

    @property
    def tenant(self) -> str | None:
        return self.verdict.tenant if self.verdict else None

    @property
    def key_id(self) -> int | None:
        return self.verdict.key_id if self.verdict else None

    @property
    def plan(self) -> str | None:
        return self.verdict.plan if self.verdict else None

    @property
    def usage(self) -> Usage:
        """What the call used, as reported so far."""
        return Usage(**{"endpoint": "", **self._usage})

    def record(
        self,
        *,
        tokens_in: int | None = None,
        tokens_out: int | None = None,
        cached_tokens: int | None = None,
        model: str | None = None,
        units: int | None = None,
    ) -> TollgateCall:
        """Set what the call used (None leaves a field as it was). Counts are whole numbers
        from 0; ``model`` is cut to 120 characters."""
        counts = {"tokens_in": tokens_in, "tokens_out": tokens_out, "cached_tokens": cached_tokens, "units": units}
        for name, value in counts.items():
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number from 0, got {value!r}")
            self._usage[name] = value
        if model is not None:
            if not isinstance(model, str):
                raise ValueError(f"model must be a string, got {model!r}")
            self._usage["model"] = model[:MAX_MODEL_LENGTH]
        return self

    def record_response(self, response: Any) -> Usage | None:
        """Record the usage of a model response (OpenAI, Responses API, Anthropic; an SDK object
        or its dict), read with :func:`tollgate_client.usage.usage_of`; None when it has none."""
        usage = usage_of(response)
        if usage is not None:
            self._record_usage(usage)
        return usage

    def _record_usage(self, usage: Usage) -> None:
        self.record(
            tokens_in=usage.tokens_in,
            tokens_out=usage.tokens_out,
            cached_tokens=usage.cached_tokens,
            model=usage.model or None,
            units=usage.units,
        )

    def _claim(self) -> bool:
        """True once: the caller then completes the call (unmetered calls are never completed)."""
        if self.completed:
            return False
        self.completed = True
        return self.metered

    def _complete(self, status_code: int, duration_ms: int, error: BaseException | None = None) -> bool | None:
        """Send the completion; a failure is logged, never raised. None when it failed."""
        usage = self.usage
        try:
            return self.verifier.complete(
                str(self.call_id),
                status_code,
                duration_ms,
                tokens_in=usage.tokens_in,
                tokens_out=usage.tokens_out,
                cached_tokens=usage.cached_tokens,
                model=usage.model,
                units=usage.units,
                error_message=f"{type(error).__name__}: {error}" if error is not None else "",
            )
        except Exception as exc:
            log.warning("could not complete Tollgate call %s (status %s): %s", self.call_id, status_code, exc)
            return None


# -- what both middlewares share ------------------------------------------------------------------


@dataclass(frozen=True)
class _Refusal:
    status: int
    detail: str
    headers: Headers = field(default_factory=list)

    def body(self) -> bytes:
        return json.dumps({"detail": self.detail}).encode()

    def response_headers(self) -> Headers:
        return [("Content-Type", "application/json"), ("Content-Length", str(len(self.body()))), *self.headers]


class _Gate:
    """Which paths are protected, and the verify of one protected request."""

    def __init__(
        self,
        service_token: str | None,
        base_url: str,
        protect: Protect,
        verifier: TollgateVerifier | None,
        fail_open: bool,
        units: Units,
        timeout: float,
    ) -> None:
        if verifier is None:
            if not service_token:
                raise ValueError("give a service_token or a verifier")
            verifier = TollgateVerifier(service_token, base_url, timeout=timeout)
        self.verifier = verifier
        self.protects = _protector(protect)
        self.fail_open = fail_open
        self.units = units

    def units_of(self, request: Mapping[str, Any]) -> int:
        return self.units(request) if callable(self.units) else self.units

    def admit(
        self, key: str | None, path: str, method: str, end_user: str | None, units: int
    ) -> TollgateCall | _Refusal:
        """The call to let through, or the answer to refuse it with."""
        if key is None:
            return _Refusal(401, MISSING_KEY_DETAIL)
        if len(key) > MAX_KEY_LENGTH:
            return _Refusal(401, INVALID_KEY_DETAIL)  # longer than any key: not worth asking
        end_user = (end_user or "").strip()
        if len(end_user) > MAX_END_USER_LENGTH:
            return _Refusal(400, f"X-End-User may be at most {MAX_END_USER_LENGTH} characters")
        try:
            verdict = self.verifier.verify(key, path, method, units=units, end_user=end_user or None)
        except ServiceTokenRejected as exc:
            # A configuration error, not an outage: never let through, whatever fail_open says.
            log.error("Tollgate rejected the service token (%s); answering %s %s with 503", exc.detail, method, path)
            return _Refusal(503, UNAVAILABLE_DETAIL)
        except InvalidRequest as exc:
            # Tollgate refused what the request gave it (a method it does not meter, such as
            # TRACE): the caller's request, answered 400 with Tollgate's reason.
            log.warning("Tollgate refused to verify %s %s: %s", method, path, exc.detail)
            return _Refusal(400, exc.detail)
        except TollgateError as exc:
            if self.fail_open:
                log.warning("could not verify %s %s with Tollgate (%s); let through unmetered", method, path, exc)
                return TollgateCall(self.verifier, None)
            log.error("could not verify %s %s with Tollgate: %s", method, path, exc)
            return _Refusal(503, UNAVAILABLE_DETAIL)
        if not verdict.valid:
            return _Refusal(verdict.status, verdict.detail, verdict.response_headers())
        return TollgateCall(self.verifier, verdict)


def _protector(protect: Protect) -> Callable[[str], bool]:
    if protect is None:
        return lambda path: True
    if callable(protect):
        return protect
    prefixes = (protect,) if isinstance(protect, str) else tuple(protect)
    return lambda path: any(_under(path, prefix) for prefix in prefixes)


def _under(path: str, prefix: str) -> bool:
    """``/api`` covers ``/api`` and ``/api/…``, not ``/apiary``."""
    base = prefix.rstrip("/")
    return not base or path == base or path.startswith(base + "/")


def _key_from(x_api_key: str | None, authorization: str | None) -> str | None:
    """The customer's key: ``X-API-Key``, else ``Authorization: Bearer``; None when neither."""
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


def _answered(call: TollgateCall, status: int | None, app_headers: Iterable[tuple[str, str]], ours: Headers) -> Headers:
    """The app started its response: its status and the usage its ``X-Tollgate-Usage`` header
    says go to ``call``; the headers sent are the app's without that one and without any it
    set of ``ours``, then ``ours``."""
    call.status_code = status
    names = {name.lower() for name, _ in ours}
    usage = None
    kept = []
    for name, value in app_headers:
        lowered = name.lower()
        if lowered == USAGE_HEADER.lower():
            usage = usage_from_header(value) or usage
        elif lowered not in names:
            kept.append((name, value))
    if usage is not None:
        call._record_usage(usage)
    return kept + ours


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def _status_code(status: str) -> int | None:
    return _int(status.split(" ", 1)[0])


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value:
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _json_object(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        kind = response.headers.get("Content-Type", "no content type")
        raise TollgateError(f"expected a JSON response, got {kind}", response.status_code) from exc
    if not isinstance(body, dict):
        raise TollgateError("expected a JSON object", response.status_code)
    return body


def _elapsed_ms(started: float) -> int:
    return max(0, round((time.monotonic() - started) * 1000))


# -- WSGI -----------------------------------------------------------------------------------------


class TollgateMiddleware:
    """WSGI middleware that meters ``app``'s protected paths with Tollgate.

    ``protect``: None (every path), a list of path prefixes (``"/api"`` covers ``/api`` and
    ``/api/…``), or a function of the path. ``units``: what one call counts, or a function of
    the environ. For a protected request:

    * the key is ``X-API-Key`` or ``Authorization: Bearer``; none: 401 ``Missing API key``,
      Tollgate not asked;
    * refused by Tollgate: its status, ``{"detail": ...}``, rate-limit headers, ``Retry-After``
      (without asking: a key longer than any key is 401 ``Invalid API key``, an ``X-End-User``
      over 120 characters 400; a request Tollgate will not verify, such as a TRACE, is 400
      with its reason);
    * Tollgate unreachable or failing: 503 ``Usage service unavailable``, or with ``fail_open``
      the call goes through unmetered (a warning is logged). A rejected service token is always
      a 503 (and an error logged), ``fail_open`` or not;
    * admitted: the app runs with ``environ["tollgate.call"]`` (a :class:`TollgateCall`); its
      response gets the rate-limit headers and loses ``X-Tollgate-Usage`` (read as usage).
      When the server closes the response, the call is completed with its status (500 if the
      app raised, with its error), the milliseconds from calling the app to the close, and the
      usage. A failed completion is logged; Tollgate stores a call never completed with status 0.

    The completion is one HTTP call made in the request's thread after the body was sent.
    """

    def __init__(
        self,
        app: WSGIApp,
        service_token: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        *,
        protect: Protect = None,
        verifier: TollgateVerifier | None = None,
        fail_open: bool = False,
        units: Units = 1,
        timeout: float = 5.0,
    ) -> None:
        self.app = app
        self.gate = _Gate(service_token, base_url, protect, verifier, fail_open, units, timeout)
        self.verifier = self.gate.verifier

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = _wsgi_path(environ)
        if not self.gate.protects(path):
            return self.app(environ, start_response)
        method = str(environ.get("REQUEST_METHOD") or "GET")
        key = _key_from(environ.get("HTTP_X_API_KEY"), environ.get("HTTP_AUTHORIZATION"))
        admitted = self.gate.admit(key, path, method, environ.get("HTTP_X_END_USER"), self.gate.units_of(environ))
        if isinstance(admitted, _Refusal):
            start_response(_status_line(admitted.status), admitted.response_headers())
            return [admitted.body()]
        call = admitted
        environ["tollgate.call"] = call
        ours = call.verdict.response_headers() if call.verdict else []

        def tollgate_start_response(status: str, headers: Headers, exc_info: Any = None) -> Any:
            headers = _answered(call, _status_code(status), headers, ours)
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        started = time.monotonic()
        try:
            result = self.app(environ, tollgate_start_response)
        except Exception as exc:
            _finish(call, 500, started, exc)
            raise
        return _CompletingResponse(result, call, started)


class _CompletingResponse:
    """The app's response iterable; closing it closes the app's and completes the call."""

    def __init__(self, result: Iterable[bytes], call: TollgateCall, started: float) -> None:
        self._result = result
        self._call = call
        self._started = started
        self._error: BaseException | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._result
        except Exception as exc:
            self._error = exc
            raise

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            status = self._call.status_code
            failed = self._error is not None or status is None
            _finish(self._call, 500 if failed else status, self._started, self._error)


def _finish(call: TollgateCall, status: int, started: float, error: BaseException | None = None) -> None:
    if call._claim():
        call._complete(status, _elapsed_ms(started), error)


def _wsgi_path(environ: Mapping[str, Any]) -> str:
    """``PATH_INFO`` as text (WSGI gives it as latin-1-decoded bytes)."""
    path = str(environ.get("PATH_INFO") or "/")
    try:
        return path.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return path


# -- ASGI -----------------------------------------------------------------------------------------


class TollgateASGIMiddleware:
    """ASGI 3 middleware that meters ``app``'s protected paths with Tollgate, like
    :class:`TollgateMiddleware` (same options, same answers); other scope types (lifespan,
    websocket) pass through untouched.

    The verify and the completion run in a thread (``asyncio.to_thread``), not on the event loop.
    The app gets a copy of the scope with ``scope["tollgate.call"]``. The call is completed
    after the final ``http.response.body`` (``more_body`` false; the last trailers when the
    response announced some), with 500 if the app raised first, or when the client disconnects
    first: with the response's status, or 499 if none had started.
    """

    def __init__(
        self,
        app: ASGIApp,
        service_token: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        *,
        protect: Protect = None,
        verifier: TollgateVerifier | None = None,
        fail_open: bool = False,
        units: Units = 1,
        timeout: float = 5.0,
    ) -> None:
        self.app = app
        self.gate = _Gate(service_token, base_url, protect, verifier, fail_open, units, timeout)
        self.verifier = self.gate.verifier

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Receive,
        send: Send,
    ) -> None:
        path = str(scope.get("path") or "/")
        if scope.get("type") != "http" or not self.gate.protects(path):
            await self.app(scope, receive, send)
            return
        method = str(scope.get("method") or "GET")
        headers = _asgi_headers(scope)
        key = _key_from(headers.get("x-api-key"), headers.get("authorization"))
        units = self.gate.units_of(scope)
        end_user = headers.get("x-end-user")
        if key is None:
            admitted: TollgateCall | _Refusal = _Refusal(401, MISSING_KEY_DETAIL)
        else:
            admitted = await asyncio.to_thread(self.gate.admit, key, path, method, end_user, units)
        if isinstance(admitted, _Refusal):
            start = {"status": admitted.status, "headers": _encoded(admitted.response_headers())}
            await send({"type": "http.response.start", **start})
            await send({"type": "http.response.body", "body": admitted.body(), "more_body": False})
            return
        call = admitted
        ours = call.verdict.response_headers() if call.verdict else []
        started = time.monotonic()
        trailers = False

        async def finish(status: int, error: BaseException | None = None) -> None:
            if call._claim():
                await asyncio.to_thread(call._complete, status, _elapsed_ms(started), error)

        async def tollgate_send(message: Any) -> None:
            nonlocal trailers
            kind = message.get("type")
            if kind == "http.response.start":
                trailers = bool(message.get("trailers", False))
                merged = _answered(call, int(message["status"]), _decoded(message.get("headers") or ()), ours)
                message = {**message, "headers": _encoded(merged)}
            await send(message)
            last_body = kind == "http.response.body" and not message.get("more_body", False) and not trailers
            last_trailers = kind == "http.response.trailers" and not message.get("more_trailers", False)
            if last_body or last_trailers:
                await finish(call.status_code or 500)

        async def tollgate_receive() -> Any:
            message = await receive()
            if message.get("type") == "http.disconnect":
                await finish(call.status_code if call.status_code is not None else CLIENT_CLOSED)
            return message

        try:
            await self.app({**scope, "tollgate.call": call}, tollgate_receive, tollgate_send)
        except Exception as exc:
            await finish(500, exc)
            raise
        await finish(call.status_code or 500)  # an app that returned without ending its response


def _asgi_headers(scope: Mapping[str, Any]) -> dict[str, str]:
    """The request's headers by lower-case name (the first of repeated ones)."""
    headers: dict[str, str] = {}
    for name, value in _decoded(scope.get("headers") or ()):
        headers.setdefault(name.lower(), value)
    return headers


def _decoded(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    return [(bytes(name).decode("latin-1"), bytes(value).decode("latin-1")) for name, value in headers]


def _encoded(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
