"""The data model, one module per aggregate. Import models from here."""

from ._types import as_money, utcnow
from .accounts import AccountToken, RecoveryCode, TrustedDevice
from .alerts import (
    Alert,
    AlertRule,
    AlertSettings,
    Budget,
    BudgetCrossing,
    Notification,
    NotificationChannel,
    NotificationDelivery,
)
from .audit import AuditEvent
from .billing import Statement, StatementLine
from .gateway import GatewayRoute, ServiceToken
from .keys import ApiKey
from .pricing import ModelPrice, ServiceLimit
from .sessions import UserSession
from .team import Invite
from .tenancy import Plan, Subscription, Tenant, User
from .usage import LATENCY_BUCKETS_MS, LATENCY_COLUMNS, UsageDeadLetter, UsageRecord, UsageRollup

__all__ = [
    "LATENCY_BUCKETS_MS",
    "LATENCY_COLUMNS",
    "AccountToken",
    "Alert",
    "AlertRule",
    "AlertSettings",
    "ApiKey",
    "AuditEvent",
    "Budget",
    "BudgetCrossing",
    "GatewayRoute",
    "Invite",
    "ModelPrice",
    "Notification",
    "NotificationChannel",
    "NotificationDelivery",
    "Plan",
    "RecoveryCode",
    "ServiceLimit",
    "ServiceToken",
    "Statement",
    "StatementLine",
    "Subscription",
    "Tenant",
    "TrustedDevice",
    "UsageDeadLetter",
    "UsageRecord",
    "UsageRollup",
    "User",
    "UserSession",
    "as_money",
    "utcnow",
]
