"""Bodies and queries of the notification-channel operations. A channel's rules (the target's
form, the secret's) are the domain's patterns, stated here for the document and checked by
:mod:`portal.notify.channels` with a message naming the field."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator

from ..notify.channels import EMAIL, MAX_EMAIL, MAX_NAME, MAX_URL, SECRET, SLACK_URL, WEBHOOK_URL
from .bodies import Body
from .schemas import Query

Severity = Literal["warning", "critical"]


class _Channel(Body):
    name: str | None = Field(None, max_length=MAX_NAME, description="what the portal calls it (default: the target)")
    min_severity: Severity = Field("warning", description="the least severe alerts it is told about")


class EmailChannel(_Channel):
    kind: Literal["email"]
    target: str = Field(
        max_length=MAX_EMAIL, description="the e-mail address", json_schema_extra={"pattern": f"^{EMAIL}$"}
    )


class SlackChannel(_Channel):
    kind: Literal["slack"]
    target: str = Field(
        max_length=MAX_URL,
        description="the Slack incoming-webhook URL",
        json_schema_extra={"pattern": f"^{SLACK_URL}$"},
    )


class WebhookChannel(_Channel):
    kind: Literal["webhook"]
    target: str = Field(
        max_length=MAX_URL,
        description="the URL Tollgate POSTs signed events to (a public host name)",
        json_schema_extra={"pattern": f"^{WEBHOOK_URL}$"},
    )
    secret: str | None = Field(
        None,
        max_length=128,
        description="the Standard Webhooks signing secret (whsec_...); generated when absent",
        json_schema_extra={"pattern": f"^{SECRET}$"},
    )


KINDS: dict[str, type[_Channel]] = {"email": EmailChannel, "slack": SlackChannel, "webhook": WebhookChannel}


class _Kind(BaseModel):
    model_config = ConfigDict(extra="ignore")
    kind: Literal["email", "slack", "webhook"]


class ChannelBody(RootModel[Annotated[EmailChannel | SlackChannel | WebhookChannel, Field(discriminator="kind")]]):
    """A notification channel: an e-mail address, a Slack incoming webhook, or a webhook Tollgate
    signs as Standard Webhooks says (its secret is answered once, when the channel is made).
    Slack and webhook targets must have public addresses, checked again on every send (unless the
    server allows private ones, when any http(s) URL is accepted)."""

    @classmethod
    def parse_json(cls, data: Any) -> _Channel:
        # Validated as the kind it claims to be, so errors name that kind's fields.
        kind = _Kind.model_validate(data).kind
        return KINDS[kind].model_validate(data)


def whole_number_text(value: Any) -> Any:
    """A query's number as sent: digits only (" 8", "8_0", "+8" are no numbers in a URL)."""
    if isinstance(value, str) and not re.fullmatch(r"-?[0-9]+", value):
        raise ValueError("expected a whole number")
    return value


class DeliveriesQuery(Query):
    status: Literal["pending", "sent", "failed"] | None = Field(None, description="only deliveries in this state")
    channel_id: int | None = Field(None, ge=1, le=2**31 - 1, description="only this channel's deliveries")
    limit: int = Field(50, ge=1, le=200, description="deliveries to list, newest first")

    @field_validator("channel_id", mode="before")
    @classmethod
    def _digits(cls, value: Any) -> Any:
        return whole_number_text(value)
