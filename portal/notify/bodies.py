"""The bodies of notification channels, shared by the API and the portal's forms. A channel's
rules (the target's form, the secret's) are the domain's patterns, stated here for the
document and checked by :mod:`portal.notify.channels` with a message naming the field."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from ..kernel.bodies import Body
from .channels import EMAIL, MAX_EMAIL, MAX_NAME, MAX_URL, SECRET, SLACK_URL, WEBHOOK_URL

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
