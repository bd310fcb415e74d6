"""Canonical JSON (RFC 8785, JCS) for record details and the fixed timestamp format of records.

The hash of a record must not depend on who serializes it, so details are stored as their JCS text:
keys sorted by UTF-16 code units, no whitespace, UTF-8, ECMAScript number formatting. CPython's C
JSON encoder produces exactly that for the values `is_plain` accepts (the common case, and fast);
anything else goes through the exact, slower encoder below.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

# JCS numbers are IEEE doubles: integers beyond this lose precision, so they are refused.
MAX_SAFE_INTEGER = 2**53 - 1
_C_DUMPS = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False).encode
_ESCAPE = json.encoder.encode_basestring  # the C escaper: ", \\, \b \f \n \r \t, other < 0x20 as \u00xx


def quote(text: str) -> str:
    """A JSON string literal exactly as JCS writes it (non-ASCII left as UTF-8)."""
    return _ESCAPE(text)


def plain_float(value: float) -> bool:
    """Whether CPython's repr of a non-integral finite float equals its ECMAScript form.

    Both print the shortest round-trip digits; they differ only in when they switch to exponent
    notation (Python below 1e-4, ECMAScript below 1e-6) and in how they write the exponent."""
    return abs(value) >= 1e-4


def ecmascript_number(value: float) -> str:
    """Number::toString of ECMA-262 (what JCS prescribes) for a finite double."""
    if value == 0:
        return "0"
    if value < 0:
        return "-" + ecmascript_number(-value)
    mantissa, _, exp_text = repr(value).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    point = len(whole) + int(exp_text or 0) - (len(whole + fraction) - len(digits))
    digits = digits.rstrip("0")
    k, n = len(digits), point
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + digits
    exponent = n - 1
    sign = "+" if exponent >= 0 else "-"
    head = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{head}e{sign}{abs(exponent)}"


def _utf16_key(text: str) -> bytes:
    return text.encode("utf-16-be", "surrogatepass")


def _write(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_ESCAPE(value))
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("NaN and Infinity are not JSON")
        out.append(ecmascript_number(value))
    elif isinstance(value, dict):
        out.append("{")
        for i, key in enumerate(sorted(value, key=_utf16_key)):
            if i:
                out.append(",")
            out.append(_ESCAPE(key))
            out.append(":")
            _write(value[key], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise TypeError(f"{type(value).__name__} is not a JSON value")


def dumps(value: Any, *, plain: bool = False) -> str:
    """JCS text of a JSON value. `plain=True` promises what `sanitize` checks (no float outside
    `plain_float`, no integral float, no key beyond the BMP), which lets the C encoder do the work."""
    if plain:
        return _C_DUMPS(value)
    out: list[str] = []
    _write(value, out)
    return "".join(out)


# --- timestamps ---------------------------------------------------------------------------------------------

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # always six fraction digits, always UTC


def format_time(moment: datetime) -> str:
    """`YYYY-MM-DDTHH:MM:SS.ffffffZ` in UTC; the moment must carry a time zone."""
    if moment.tzinfo is None:
        raise ValueError("time has no time zone")
    utc = moment.astimezone(UTC)
    if utc.year < 1000:  # strftime's %Y does not pad to four digits; keep its spelling there
        return utc.strftime(TIME_FORMAT)
    # isoformat is C and several times cheaper than strftime; the same text for four-digit years.
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_time(text: str) -> datetime:
    if len(text) == 27 and text[-1] == "Z" and text[10] == "T" and text[19] == "." and text[20:26].isdigit():
        # The canonical spelling (every stored and emitted time): fromisoformat is C, strptime is not.
        try:
            return datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)
        except ValueError:
            pass  # strptime below names the problem as before
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


def time_from_micros(micros: int) -> datetime:
    return datetime.fromtimestamp(micros // 1_000_000, UTC).replace(microsecond=micros % 1_000_000)


def micros(moment: datetime) -> int:
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
