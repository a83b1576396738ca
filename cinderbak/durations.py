"""Durations as operators write them in config: ``90s``, ``15m``, ``6h``.

One parser for every option that takes a duration, so ``14d`` means the
same in a schedule, a retention rule and ``full_every``.
"""

from __future__ import annotations

import datetime
import re

_UNITS = {
    "s": datetime.timedelta(seconds=1),
    "m": datetime.timedelta(minutes=1),
    "h": datetime.timedelta(hours=1),
    "d": datetime.timedelta(days=1),
    "w": datetime.timedelta(weeks=1),
}
_PATTERN = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
EXPECTED = (
    "a whole number followed by s, m, h, d or w (e.g. 90s, 6h, 14d), "
    "above 0 and at most 100 years"
)
# Beyond this, date arithmetic (a slot after 2000-01-01, "now - within")
# leaves the range of datetime; no schedule or retention needs more.
LONGEST = datetime.timedelta(days=36525)


def parse_duration(text: str) -> datetime.timedelta:
    """Given ``"6h"``, return six hours. Raise ValueError naming the form."""
    match = _PATTERN.match(text.lower())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not a duration; expected {EXPECTED}")
    count, unit = int(match.group(1)), _UNITS[match.group(2)]
    if count > LONGEST // unit:
        raise ValueError(f"{text!r} is too long; expected {EXPECTED}")
    return count * unit
