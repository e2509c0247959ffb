"""How Tollgate reads a JSON body, in the API and the portal alike: fields it does not know are
refused, each NUL character is read as U+FFFD (PostgreSQL stores no NUL), and 3.0 is 3."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, model_validator


def without_nul(value: Any) -> Any:
    """``value`` with each NUL character of its strings read as U+FFFD (PostgreSQL stores no NUL;
    the length stays what was checked)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value


def plain(value: Any) -> Any:
    """A top-level value as Tollgate reads it: no NUL in its strings, 3.0 as 3."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return without_nul(value)


class Body(BaseModel):
    # Strings are taken as sent: the lengths checked are the lengths the document states.
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _plain(cls, data: Any) -> Any:
        return {key: plain(value) for key, value in data.items()} if isinstance(data, dict) else data


def decimal_text(pattern: str, example: str) -> BeforeValidator:
    """A number sent as a string must be written as ``pattern`` says (the document's pattern):
    Python's Decimal would also read " 5", "1_0" or other scripts' digits."""
    compiled = re.compile(pattern)

    def check(value: Any) -> Any:
        if isinstance(value, str) and not compiled.fullmatch(value):
            raise ValueError(f"expected a number written like {example}")
        return value

    return BeforeValidator(check)
