"""Tenant strings made safe to show an operator.

Volume names, metadata values and policy names come from tenants. Written
raw to a terminal, a control character or an ANSI escape sequence can
recolour the screen, rename the window, erase the line before it or fake
a log line; a right-to-left override can reverse what follows. Every
table, log line and prompt shows such text through :func:`escape`, which
spells each character that is not printable as a Python escape
(``\\x1b``, ``\\n``, ``\\u202e``) and leaves everything else, accents and
scripts included, as written.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator


def escape(value: object) -> str:
    """Given any value, return its text with unprintable characters
    escaped; printable text comes back unchanged."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode()
        for ch in text
    )


def escape_cell(value: object) -> object:
    """A table cell: strings escaped, numbers and None kept for the
    formatters (JSON keeps its types)."""
    return escape(value) if isinstance(value, str) else value


def escape_rows(
    rows: Iterable[Iterable[object]],
) -> Iterator[tuple[object, ...]]:
    """Every cell of a table escaped (see :func:`escape_cell`), row by
    row: a command that streams its rows (``cinderbak plan`` over a
    region) is not made to hold them all."""
    return (escape_row(row) for row in rows)


def escape_row(row: Iterable[object]) -> tuple[object, ...]:
    """One row escaped. A row of printable text (a plan's 100,000 rows of
    ids and dates) is checked with one call instead of one per cell:
    joining it fails on a cell that is not text, and then, or when
    something is unprintable, each cell is looked at."""
    cells = tuple(row)
    try:
        if "".join(cells).isprintable():  # type: ignore[arg-type]
            return cells
    except TypeError:
        pass
    return tuple(escape_cell(cell) for cell in cells)
