"""CSV for every export, written so a spreadsheet never runs a cell as a formula (OWASP's advice
on CSV injection).

A cell is a number or text. Numbers Tollgate itself writes (``int``, ``float``, ``Decimal``:
amounts such as ``-1.50``, counts) are written bare, so a spreadsheet still sums them. Every
``str`` cell is treated as text from somewhere else and neutralised:

- where the text, or any part of it after a ``,`` ``;`` tab or line break (a spreadsheet may
  split on any of them: ``;`` is the separator in many locales), starts (after spaces or
  quotes) with ``=`` ``+`` ``-`` ``@``, or with a tab or carriage return, a single quote goes in
  front of that part, so ``=1`` becomes ``'=1`` and ``x;=cmd`` becomes ``x;'=cmd`` (a ``;``
  locale splits the latter into ``x`` and ``'=cmd``, which is text);
- text holding a separator (``,`` ``;``), a quote, a tab or a line break is quoted, doubling
  its quotes (RFC 4180).

A number that is not finite (``NaN``, ``-Infinity``) is written as text, neutralised. ``None``
is an empty cell. Records end with CRLF, as RFC 4180 says.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from decimal import Decimal

Cell = str | int | float | Decimal | None

# The start of the text, or a separator a spreadsheet may split on, before a formula's start.
_FORMULA_PART = re.compile(r"""(^|\r\n|[,;\t\r\n])(?=[\s"]*[=+\-@]|[\t\r])""")
_NEEDS_QUOTES = re.compile(r"""[,;"\t\r\n]|^\s|\s$""")
LINE_END = "\r\n"


def neutralise(text: str) -> str:
    """``text`` with a single quote before every part of it a spreadsheet could take for a formula."""
    return _FORMULA_PART.sub(lambda match: match.group(1) + "'", text)


def cell(value: Cell) -> str:
    """One cell as it is written in a record: a number bare, text neutralised and quoted if need be."""
    if value is None:
        return ""
    if isinstance(value, bool):  # a bool is an int to Python but not a figure to sum
        value = "true" if value else "false"
    if isinstance(value, Decimal) and value.is_finite():
        return format(value, "f")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if isinstance(value, Decimal | float):
        value = str(value)
    if not isinstance(value, str):
        raise TypeError(f"a CSV cell is a str, int, float, Decimal or None, not {type(value).__name__}")
    text = neutralise(value)
    if _NEEDS_QUOTES.search(text):
        return '"' + text.replace('"', '""') + '"'
    return text


def csv_line(row: Iterable[Cell]) -> str:
    """One record, with its line end."""
    return ",".join(cell(value) for value in row) + LINE_END


def csv_lines(rows: Iterable[Iterable[Cell]]) -> Iterator[str]:
    """The records one line at a time, for a streamed export."""
    for row in rows:
        yield csv_line(row)


def csv_document(rows: Iterable[Iterable[Cell]]) -> str:
    """A whole CSV document."""
    return "".join(csv_lines(rows))
