"""Prices of outside services' models, versioned by time, and the cost of a call."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select

from ..extensions import db
from ..models import ModelPrice

MILLION = Decimal(1_000_000)
COST_QUANTUM = Decimal("0.00000001")


class PriceBook:
    """Every price version, loaded once, answering "what did this cost at that time"."""

    def __init__(self, prices: Iterable[ModelPrice]) -> None:
        self._versions: dict[tuple[str, str], list[ModelPrice]] = {}
        for price in prices:
            self._versions.setdefault((price.service, price.model), []).append(price)
        for versions in self._versions.values():
            versions.sort(key=lambda p: p.effective_from)

    @classmethod
    def load(cls) -> PriceBook:
        return cls(db.session.scalars(select(ModelPrice)))

    def price_at(self, service: str, model: str, at: datetime) -> ModelPrice | None:
        for key in ((service, model), (service, "")):
            for price in reversed(self._versions.get(key, ())):
                if price.effective_from <= at and (price.effective_to is None or at < price.effective_to):
                    return price
        return None

    def cost(
        self,
        service: str,
        model: str,
        at: datetime,
        tokens_in: int = 0,
        tokens_out: int = 0,
        quota_units: int = 0,
    ) -> Decimal | None:
        """The cost of one call, or None when no price is known for it."""
        price = self.price_at(service, model, at)
        if price is None:
            return None
        cost = (
            Decimal(tokens_in) * price.input_per_million / MILLION
            + Decimal(tokens_out) * price.output_per_million / MILLION
            + price.per_request
            + Decimal(quota_units) * price.per_quota_unit
        )
        return cost.quantize(COST_QUANTUM)
