"""Sanitization of event details before they are spooled or stored: no secrets, no full IP addresses.

Keys that name credentials (authorization, cookies, tokens, passwords, keys…) are dropped at any
depth, as are values that are credentials whatever their key (bearer/basic headers, JWTs, PEM
private keys). IP addresses anywhere in a string are cut to their /24 (IPv4) or /48 (IPv6) network.
Every path touched is reported as a JSON Pointer (RFC 6901): present in the result = truncated,
absent = erased. The walk also checks what canonical JSON needs (UTF-8, finite numbers, size).
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

from ztmesh.audit.canonical import MAX_SAFE_INTEGER, plain_float
from ztmesh.audit.errors import InvalidEvent

MAX_DEPTH = 32

# Words that make a key secret on their own, after splitting `X-Api-Key`/`apiKey`/`api_key` into words.
SECRET_WORDS = frozenset({
    "authorization", "cookie", "cookies", "token", "password", "passwd", "pwd", "passphrase", "secret",
    "secrets", "credential", "credentials", "jwt", "otp", "totp", "apikey", "bearer", "sessionid",
    "privatekey", "csrf", "xsrf", "pin", "cvv",
})  # fmt: skip
# Pairs of words that together name a secret ("api key", "private key", "secret key"...).
SECRET_PAIRS = frozenset({
    ("api", "key"), ("private", "key"), ("secret", "key"), ("access", "key"), ("signing", "key"),
    ("encryption", "key"), ("client", "secret"), ("session", "id"), ("set", "cookie"), ("kek", "key"),
})  # fmt: skip
# Keys that merely mention a secret word but are safe, metadata about keys rather than keys.
SAFE_KEYS = frozenset({"key_id", "key_version", "token_type", "auth_method", "auth_time", "public_key"})

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_WORD_SPLIT = re.compile(r"[^a-z0-9]+")
_SECRET_VALUE = re.compile(
    r"^\s*(?:(?:bearer|basic|digest|negotiate)\s+\S"  # HTTP credentials
    r"|eyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*\s*$"  # a JWT (header.payload.signature)
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----)",  # PEM private key
    re.IGNORECASE,
)
_IPV4 = re.compile(r"(?<![\d.])(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
# Candidates only: ipaddress decides. At least two colons, optional embedded IPv4 and zone.
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?:%[\w.-]+)?(?![\w:]|\.\d)"
)
_MAYBE_IP = re.compile(r"\d\.\d|:.*:")
# For `unchanged`: the secret-value test over many strings at once, one per line.
_SECRET_VALUE_LINES = re.compile(_SECRET_VALUE.pattern, re.IGNORECASE | re.MULTILINE)
_LONG_DIGITS = re.compile(r"\d{16}")
# Substrings one of which every key `is_secret_key` accepts contains, lowercased (its words, pairs and
# suffixes); plain substring tests, as a case-insensitive alternation costs ten times more here.
SECRET_KEY_HINTS = ("author", "cookie", "token", "pass", "pwd", "secret", "credential", "jwt", "otp", "key", "bearer",
                    "session", "csrf", "xsrf", "pin", "cvv")  # fmt: skip
# Substrings one of which every value `is_secret_value` accepts contains, lowercased.
SECRET_VALUE_HINTS = ("bearer", "basic", "digest", "negotiate", "eyj", "-----begin")
_SEPARATORS = re.compile(r"[^a-z0-9\n]+")  # what is_secret_key splits a lowercased key's words on
# Each run of four dot-separated numbers: every address _IPV4 finds is the start of one.
_DOTTED_QUAD = re.compile(r"\d+\.\d+\.\d+\.\d+")


@dataclass(frozen=True)
class Sanitized:
    details: dict[str, Any]
    masked: tuple[str, ...]  # JSON Pointers, sorted
    plain: bool  # canonical.dumps(details, plain=True) is exact


@functools.lru_cache(maxsize=8192)  # the same few dozen keys come back in every event
def is_secret_key(key: str) -> bool:
    normalized = _CAMEL.sub("_", key).lower()
    if normalized in SAFE_KEYS or normalized.replace("-", "_") in SAFE_KEYS:
        return False
    words = [w for w in _WORD_SPLIT.split(normalized) if w]
    if any(w in SECRET_WORDS for w in words):
        return True
    if any(pair in SECRET_PAIRS for pair in zip(words, words[1:], strict=False)):
        return True
    joined = "".join(words)
    return joined in SECRET_WORDS or joined.endswith(("password", "apikey", "privatekey", "secret", "token"))


def is_secret_value(text: str) -> bool:
    return bool(_SECRET_VALUE.match(text))


def _truncate_v6(address: ipaddress.IPv6Address) -> str:
    mapped = address.ipv4_mapped
    if mapped is not None:
        return "::ffff:" + _truncate_v4(mapped)
    # 6to4 (2002::/16) carries the whole IPv4 in bits 16-47, so /48 would keep it: cut to /40.
    prefix = 40 if address.sixtofour is not None else 48
    return str(ipaddress.IPv6Network(f"{address.exploded.split('%')[0]}/{prefix}", strict=False).network_address)


def _truncate_v4(address: ipaddress.IPv4Address) -> str:
    return str(ipaddress.IPv4Network(f"{address}/24", strict=False).network_address)


def _v6_sub(match: re.Match[str]) -> str:
    try:
        address = ipaddress.IPv6Address(match.group(0))
    except ValueError:
        return match.group(0)
    return _truncate_v6(address)


def _v4_sub(match: re.Match[str]) -> str:
    octets = match.groups()
    if any(int(o) > 255 for o in octets):
        return match.group(0)  # e.g. a version number such as 120.0.6099.129
    return f"{octets[0]}.{octets[1]}.{octets[2]}.0"


def mask_ips(text: str) -> str:
    """`text` with every IPv4 address cut to /24 and every IPv6 address cut to /48."""
    if not _MAYBE_IP.search(text):
        return text
    if ":" in text:
        text = _IPV6.sub(_v6_sub, text)
    return _IPV4.sub(_v4_sub, text)


Path = tuple[str | int, ...]


def pointer(path: Path) -> str:
    """RFC 6901 JSON Pointer of a path (built only when a path is reported)."""
    return "".join("/" + str(token).replace("~", "~0").replace("/", "~1") for token in path)


_ERASED = object()  # what `_Walk.value` returns for a secret: the caller drops it


class _Walk:
    """One sanitization pass. The hot path (short strings, numbers) is kept free of allocations and calls
    where it can be: this runs for every field of every event on the Append path."""

    def __init__(self, event_id: str) -> None:
        self.event_id = event_id
        self.masked: list[Path] = []
        self.plain = True

    def fail(self, path: Path, problem: str) -> InvalidEvent:
        return InvalidEvent("details" + pointer(path), problem, self.event_id)

    def text(self, value: str, path: Path) -> None:
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise self.fail(path, "is not valid UTF-8 (lone surrogate)") from None
        if "\x00" in value:
            raise self.fail(path, "contains a NUL character")

    def value(self, value: Any, path: Path, depth: int) -> Any:
        """The sanitized value, or _ERASED when it is a secret."""
        kind = type(value)
        if kind is str:
            self.text(value, path)
            if _SECRET_VALUE.match(value):
                self.masked.append(path)
                return _ERASED
            if _MAYBE_IP.search(value):
                masked = mask_ips(value)
                if masked != value:
                    self.masked.append(path)
                    return masked
            return value
        if kind is int:
            if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
                raise self.fail(path, f"integer {value} is outside ±(2^53-1) and would lose precision; send a string")
            return value
        if kind is float:
            if not math.isfinite(value):
                raise self.fail(path, "NaN and Infinity are not JSON")
            if value.is_integer():
                if abs(value) <= MAX_SAFE_INTEGER:
                    return int(value)  # JCS writes 2.0 as 2; storing the int keeps the C encoder exact
                self.plain = False
            elif not plain_float(value):
                self.plain = False
            return value
        if value is None or kind is bool:
            return value
        if depth >= MAX_DEPTH:
            raise self.fail(path, f"nested deeper than {MAX_DEPTH} levels")
        if kind is dict:
            return self.mapping(value, path, depth + 1)
        if kind is list or kind is tuple:
            out = []
            for i, item in enumerate(value):
                clean = self.value(item, (*path, i), depth + 1)
                if clean is not _ERASED:
                    out.append(clean)
            return out
        for base in (str, int, float, dict, list):  # subclasses (e.g. an IntEnum): as their base type
            if isinstance(value, base):
                return self.value(base(value), path, depth)  # type: ignore[call-arg,arg-type]
        raise self.fail(path, f"a {kind.__name__} is not a JSON value")

    def mapping(self, value: dict[Any, Any], path: Path, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str:
                raise self.fail(path, f"object key {key!r} is not a string")
            child = (*path, key)
            if not key.isascii():
                self.text(key, child)
                if max(key) > "\uffff":
                    self.plain = False  # JCS sorts keys by UTF-16 code units, CPython by code points
            elif "\x00" in key:
                self.text(key, child)
            if is_secret_key(key):
                self.masked.append(child)
                continue
            clean = self.value(item, child, depth)
            if clean is not _ERASED:
                out[key] = clean
        return out


def unchanged(text: str) -> bool:
    """Whether `sanitize` would keep the JSON object `text` as it is: already canonical JSON, nothing
    to mask, nothing to refuse. Only says yes when sure (False: the walk decides, and may find nothing
    either). This is the Append path's common case - emitters send details they sanitized - decided
    with C-speed steps over the text instead of a Python walk over every value: the text is canonical
    when orjson's sorted re-encoding is the text itself (and, for the numbers let through, CPython's
    C encoder - what the walk's result is stored with - writes the same)."""
    if not text.isascii() or "\\" in text:
        return False  # escapes (surrogates, control characters) and UTF-16 key order: the walk
    try:
        parsed = orjson.loads(text)  # strict RFC 8259: no NaN or Infinity
        if type(parsed) is not dict or orjson.dumps(parsed, option=orjson.OPT_SORT_KEYS) != text.encode():
            return False  # not canonical: duplicate keys, key order, spacing, number spelling
    except orjson.JSONDecodeError:
        return False
    return _nothing_to_change(text)


# orjson refuses (TypeError) what it would otherwise write its own way: datetimes, dataclasses, and
# subclasses of str/int/dict/list (the walk turns those into their base type itself).
_STRICT_DUMPS = (
    orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)  # fmt: skip


def canonical_if_unchanged(details: dict[str, Any]) -> str | None:
    """The canonical JSON text of `details` when `sanitize` would keep it as it is, else None (the
    walk decides): `unchanged` for an emitter's own dict, without the walk. orjson writes the text;
    reading it back must give `details` again, which rules out what orjson writes but the walk refuses
    or changes (NaN and Infinity become null, UUIDs and enums strings, tuples lists)."""
    try:
        raw = orjson.dumps(details, option=_STRICT_DUMPS)
        if orjson.loads(raw) != details:
            return None
    except (TypeError, orjson.JSONEncodeError):  # not plain JSON types, or an integer beyond 64 bits
        return None
    text = raw.decode()
    if not text.isascii() or "\\" in text:
        return None
    if ".0," in text or ".0}" in text or ".0]" in text:
        # An integral float is stored as the integer it is (the walk's int(2.0); JCS writes 2) - but -0.0
        # as 0, which is the walk's to decide. A string holding such a pattern changes too, and then
        # reading the text back no longer gives `details` (where 2 == 2.0).
        if "-0.0," in text or "-0.0}" in text or "-0.0]" in text:
            return None
        text = text.replace(".0,", ",").replace(".0}", "}").replace(".0]", "]")
        if orjson.loads(text) != details:
            return None
    return text if _nothing_to_change(text) else None


def _nothing_to_change(text: str) -> bool:
    """For canonical, ASCII, escape-free JSON `text`: whether the walk would keep every number, key and
    string as it is (no secret, no address to truncate) and the nesting is within MAX_DEPTH."""
    parts = text.split('"')  # no escapes: even parts are outside strings, odd parts are strings
    outside = "".join(parts[0::2])
    if not _plain_numbers(outside) or outside.count("{") + outside.count("[") >= MAX_DEPTH:
        return False
    # Keys and values are checked together - a value that looks like a secret key, or a key that holds
    # an address, only sends the document to the walk - except for the exact secret-key test, which is
    # run on the keys alone, and only when some string holds a word a secret key's name must contain.
    strings = parts[1::2]
    lines = "\n".join(strings)  # JSON strings hold no raw newline
    lowered = lines.lower()
    # is_secret_key also joins a key's words ("to-ken" is a token), so the hints are looked for in the
    # letters and digits alone.
    if any(map(_SEPARATORS.sub("", lowered).__contains__, SECRET_KEY_HINTS)):
        after = parts[2::2]  # canonical JSON: a key is followed by its colon, a value is not
        if any(map(is_secret_key, [k for k, a in zip(strings, after, strict=True) if a[:1] == ":"])):
            return False
    if any(map(lowered.__contains__, SECRET_VALUE_HINTS)) and _SECRET_VALUE_LINES.search(lines):
        return False
    # An IPv4 address masking would change does not end in .0 (an emitter's cut ones do); one with an
    # octet above 255, which the walk leaves alone, goes to the walk all the same. Only a string with
    # three dots can hold one (a quad never spans two strings), and the regex is the costly part here.
    quads = (quad for string in strings if string.count(".") >= 3 for quad in _DOTTED_QUAD.findall(string))
    if any(quad.rsplit(".", 1)[1] != "0" for quad in quads):
        return False
    return ":" not in lines or all(mask_ips(s) == s for s in strings if ":" in s)  # IPv6 candidates


def _plain_numbers(outside: str) -> bool:
    """Whether the numbers of canonical JSON text `outside` strings are spelt as JCS spells them, which both
    CPython and orjson then write too: no exponent (outside strings only true and false hold an "e"), no
    integral float (JCS writes 2.0 as 2; a number is followed by , ] or }), no float below 1e-4 (CPython
    writes 1e-05, orjson 0.00001) and no integer of 16 digits or more (beyond 2^53-1 it is refused)."""
    return not (
        "E" in outside or outside.count("e") != outside.count("true") + outside.count("false")
        or ".0," in outside or ".0}" in outside or ".0]" in outside or ".0000" in outside
        or _LONG_DIGITS.search(outside)
    )  # fmt: skip


def sanitize(details: dict[str, Any], event_id: str = "") -> Sanitized:
    """Drop secrets and truncate IPs in a details object; raise InvalidEvent for what JSON cannot hold."""
    if not isinstance(details, dict):
        raise InvalidEvent("details", f"must be a JSON object, got {type(details).__name__}", event_id)
    walk = _Walk(event_id)
    clean = walk.mapping(details, (), 0)
    return Sanitized(clean, tuple(sorted({pointer(p) for p in walk.masked})), walk.plain)
