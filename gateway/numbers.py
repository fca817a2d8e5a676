"""Whole numbers from request text (query strings, headers, form fields): ASCII digits only.

``str.isdigit()`` also accepts "²" or "٣", which ``int()`` refuses or reads as another number;
a value from a client goes through :func:`whole_number` instead, so a bad one is a clear client
error (or the documented default), never a 500.
"""

import re

# At most 18 digits: below 2**63, so the number also fits Redis' signed 64-bit integers (list indexes).
_DIGITS = re.compile(r"[0-9]{1,18}")


def whole_number(raw: str | None) -> int | None:
    """``raw`` as a non-negative integer if it is 1 to 18 ASCII digits and nothing else, else None."""
    if raw is None or not _DIGITS.fullmatch(raw):
        return None
    return int(raw)
