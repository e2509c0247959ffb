"""A Python client for the Tollgate API (``/api/v1``), for API customers.

    from datetime import date

    from tollgate_client import QuotaExceeded, RateLimited, TollgateClient

    with TollgateClient("tg_...", base_url="https://tollgate.example") as client:
        client.ping()                                   # {"ok": True}
        print(client.last_rate_limit.minute_remaining)  # from the X-RateLimit-* headers
        for record in client.iter_usage_logs(service="groq"):
            print(record["created_at"], record["endpoint"], record["status_code"])
        try:
            client.account_usage(date(2026, 11, 1), date(2026, 11, 30), interval="weekly")
        except QuotaExceeded as error:      # the monthly quota: not retried
            print("quota used up until", error.resets_at)
        except RateLimited as error:        # a window, still refused after the retries
            print(error.window, "limit; retry in", error.retry_after, "s")

Costs of outside services: report each call (an event id is made for you, so a retried report
counts once), or take a permit first and let the ``with`` block report the call::

    from tollgate_client import BudgetExceeded, ServiceLimitExceeded, event_from_openai

    client.report_event("groq", endpoint="/v1/chat/completions", model="llama-3.1-70b-versatile",
                        tokens_in=1200, tokens_out=300, duration_ms=840, user_id="u-7")
    try:
        with client.acquire("openai", model="gpt-4o", user_id="u-7") as call:
            response = openai_client.chat.completions.create(model="gpt-4o", messages=messages)
            call.record(event_from_openai(response))     # tokens in/out, cached, model
        with client.acquire("apify", units=compute_units) as call:
            run = actor.call()
            call.record(units=run_compute_units)
    except ServiceLimitExceeded as error:   # still refused after waiting Retry-After
        print(error.service, error.window, "retry in", error.retry_after, "s")
    except BudgetExceeded as error:         # a budget's hard stop
        print(error.detail)

The block's duration, its status (200, or the exception's ``status_code``, else 500) and error
message are reported on exit with the permit; an exception in the block is re-raised.
:func:`event_from_openai` also reads Responses API and Anthropic usage.

Every failure is a :class:`TollgateError` subclass carrying ``status``, ``detail`` and the
response's :class:`RateLimitInfo`. A 429 for a plan window is retried after ``Retry-After``;
the monthly quota's 429 is not. 5xx and network failures of GET calls are retried with
exponential backoff and full jitter. When the last response said a window had no calls left,
the next call waits for its reset first (``pace=False`` turns that off).

Metering your own API: a service with a service token (``flask create-service-token NAME``)
checks its callers' keys with Tollgate and reports each call; the middleware does both::

    from tollgate_client import TollgateMiddleware

    app.wsgi_app = TollgateMiddleware(app.wsgi_app, "tgs_...", base_url="https://tollgate.example",
                                      protect=["/api"])

    @app.post("/api/chat")
    def chat():
        response = openai_client.chat.completions.create(model="gpt-4o", messages=messages)
        request.environ["tollgate.call"].record_response(response)   # or .record(tokens_in=...)
        return {"reply": response.choices[0].message.content}

A refused key gets Tollgate's answer (401, 403, 402 or 429 with ``Retry-After``), an admitted
call the X-RateLimit-* headers; the call is completed with its status, duration and usage when
its response ends. If Tollgate cannot be reached the answer is 503 ``Usage service
unavailable`` (``fail_open=True`` lets the call through unmetered). :class:`TollgateASGIMiddleware`
does the same for ASGI apps (``scope["tollgate.call"]``); :class:`TollgateVerifier` makes the
two calls by hand.
"""

from .backoff import full_jitter
from .client import VERSION, TollgateClient
from .costs import Permit, event_from_openai
from .errors import (
    AuthenticationError,
    BudgetExceeded,
    ConnectionFailed,
    InactiveApiKey,
    InvalidApiKey,
    InvalidRequest,
    MissingApiKey,
    NotFound,
    QuotaExceeded,
    RateLimited,
    ServerError,
    ServiceLimitExceeded,
    TollgateError,
)
from .middleware import (
    ServiceTokenRejected,
    TollgateASGIMiddleware,
    TollgateCall,
    TollgateMiddleware,
    TollgateVerifier,
    Verdict,
)
from .ratelimit import RateLimitInfo

__version__ = VERSION

__all__ = [
    "AuthenticationError",
    "BudgetExceeded",
    "ConnectionFailed",
    "InactiveApiKey",
    "InvalidApiKey",
    "InvalidRequest",
    "MissingApiKey",
    "NotFound",
    "Permit",
    "QuotaExceeded",
    "RateLimitInfo",
    "RateLimited",
    "ServerError",
    "ServiceLimitExceeded",
    "ServiceTokenRejected",
    "TollgateASGIMiddleware",
    "TollgateCall",
    "TollgateClient",
    "TollgateError",
    "TollgateMiddleware",
    "TollgateVerifier",
    "Verdict",
    "event_from_openai",
    "full_jitter",
]
