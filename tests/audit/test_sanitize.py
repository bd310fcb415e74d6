"""Sanitization table: secrets dropped at any depth, IPs cut to /24 and /48, every path reported."""

from __future__ import annotations

import collections
import contextlib
import enum
import json
import random
import uuid
from datetime import UTC, datetime

import pytest

from ztmesh.audit import canonical
from ztmesh.audit.errors import InvalidEvent
from ztmesh.audit.record import parse_details
from ztmesh.audit.sanitize import canonical_if_unchanged, is_secret_key, is_secret_value, mask_ips, sanitize, unchanged

CASES = [
    # (name, details in, details out, masked paths)
    ("ipv4 value", {"ip": "192.168.10.77"}, {"ip": "192.168.10.0"}, ["/ip"]),
    ("ipv4 with port", {"peer": "10.0.0.9:5432"}, {"peer": "10.0.0.0:5432"}, ["/peer"]),
    ("x-forwarded-for list", {"xff": "203.0.113.7, 198.51.100.23"}, {"xff": "203.0.113.0, 198.51.100.0"}, ["/xff"]),
    ("ipv6 value", {"ip": "2001:db8:abcd:12:1:2:3:4"}, {"ip": "2001:db8:abcd::"}, ["/ip"]),
    ("ipv6 bracketed with port", {"peer": "[2001:db8:1:2::5]:443"}, {"peer": "[2001:db8:1::]:443"}, ["/peer"]),
    ("ipv4-mapped ipv6", {"ip": "::ffff:10.9.8.7"}, {"ip": "::ffff:10.9.8.0"}, ["/ip"]),
    ("6to4 keeps no host bits", {"ip": "2002:c000:0204::1"}, {"ip": "2002:c000:200::"}, ["/ip"]),
    ("ip inside text", {"msg": "login from 172.16.5.4 failed"}, {"msg": "login from 172.16.5.0 failed"}, ["/msg"]),
    ("nested and in lists", {"hops": [{"addr": "10.1.2.3"}, "8.8.4.4"]},
     {"hops": [{"addr": "10.1.2.0"}, "8.8.4.0"]}, ["/hops/0/addr", "/hops/1"]),
    ("already truncated stays, still reported", {"ip": "10.1.2.0"}, {"ip": "10.1.2.0"}, []),
    ("version numbers are not IPs", {"ua": "Chrome/120.0.6099.129"}, {"ua": "Chrome/120.0.6099.129"}, []),
    ("times are not IPv6", {"t": "12:34:56", "mac": "aa:bb:cc:dd:ee:ff"}, {"t": "12:34:56", "mac": "aa:bb:cc:dd:ee:ff"},
     []),
    ("authorization header", {"headers": {"Authorization": "Bearer abc", "Accept": "json"}},
     {"headers": {"Accept": "json"}}, ["/headers/Authorization"]),
    ("cookies", {"Cookie": "sid=1", "set-cookie": "a=b", "SetCookie": "c"}, {},
     ["/Cookie", "/SetCookie", "/set-cookie"]),
    ("tokens", {"access_token": "x", "refreshToken": "y", "id_token": "z", "token": "t"}, {},
     ["/access_token", "/id_token", "/refreshToken", "/token"]),
    ("passwords and secrets", {"password": "p", "db": {"PASSWD": "q", "client_secret": "s"}}, {"db": {}},
     ["/db/PASSWD", "/db/client_secret", "/password"]),
    ("keys", {"api_key": "k", "X-Api-Key": "k", "privateKey": "-----", "private_key_pem": "k", "key_id": "kid-1"},
     {"key_id": "kid-1"}, ["/X-Api-Key", "/api_key", "/privateKey", "/private_key_pem"]),
    ("bearer value under any key", {"note": "Bearer eyJhbGciOi"}, {}, ["/note"]),
    ("jwt value", {"x": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc123"}, {}, ["/x"]),
    ("secret in a list is dropped", {"vals": ["ok", "Basic dXNlcjpwYXNz"]}, {"vals": ["ok"]}, ["/vals/1"]),
    ("pointer escaping", {"a/b": {"c~d": "10.0.0.1"}}, {"a/b": {"c~d": "10.0.0.0"}}, ["/a~1b/c~0d"]),
    ("harmless keys stay", {"token_type": "Bearer", "max_tokens": 5, "public_key": "pk", "auth_method": "mfa"},
     {"token_type": "Bearer", "max_tokens": 5, "public_key": "pk", "auth_method": "mfa"}, []),
    ("integral float becomes int", {"score": 75.0}, {"score": 75}, []),
]  # fmt: skip


@pytest.mark.parametrize(("details", "expected", "masked"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_sanitize(details: dict, expected: dict, masked: list) -> None:
    result = sanitize(details)
    assert result.details == expected
    assert list(result.masked) == sorted(masked)


def test_input_is_not_modified() -> None:
    details = {"headers": {"authorization": "x"}, "ip": "10.0.0.1"}
    sanitize(details)
    assert details == {"headers": {"authorization": "x"}, "ip": "10.0.0.1"}


@pytest.mark.parametrize("key", ["Authorization", "proxy-authorization", "x-auth-token", "sessionId", "csrfToken",
                                 "otp", "credentials", "AWS_SECRET_ACCESS_KEY", "signing_key", "kek_key"])  # fmt: skip
def test_secret_key_names(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["subject", "key_id", "resource", "tokens_used", "classification", "authentication"])
def test_ordinary_key_names(key: str) -> None:
    assert not is_secret_key(key)


def test_mask_ips_is_idempotent() -> None:
    text = "a 10.1.2.3 b [2001:db8:5:6::1]:80 c"
    assert mask_ips(mask_ips(text)) == mask_ips(text) == "a 10.1.2.0 b [2001:db8:5::]:80 c"


# --- the text fast path (`unchanged`) must never disagree with the walk --------------------------------------

_KEYS = ["a", "score", "client_ip", "password", "api_key", "key_id", ":password", "a b", "é", "x\u2028", "token_type",
         "Authorization", "nested", "z", "A", "_", "0", "sessionId", "Set-Cookie", "myApiKey", "CVV", "x-PIN", "1.0,",
         "10.1.2.3", "kekKey"]  # fmt: skip
_STRINGS = ["", "ok", "10.1.2.3", "10.1.2.0", "999.1.2.3", "1.2.3.4.5", "2001:db8::1", "12:34:56", "Bearer x",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc123", "a\"b", "back\\slash", "tab\there", "line\nbreak", "é",
            "\u0000", "-----BEGIN RSA PRIVATE KEY-----", "  basic abc", ":", "\ud800", "Digest u=1", "NEGOTIATE x",
            "-----begin ec private key-----", "v1.0,beta", "x.0]", "10.1.2.00", "010.1.2.0", "1.2.3.0.5",
            "::ffff:10.9.8.7", "2001:db8::", "see 10.1.2.3 and 10.1.2.0"]  # fmt: skip
_NUMBERS = [0, 1, -1, 2**53 - 1, 2**53, -(2**53), 10**16, 0.5, 2.0, -0.0, 1e-5, 1e-4, 0.00012, 1e16, 1e21, 123.456,
            0.1 + 0.2, 78.5, float("nan"), float("inf")]  # fmt: skip


def _random_value(rng: random.Random, depth: int) -> object:
    roll = rng.random()
    if depth < 40 and roll < 0.15:
        return _random_object(rng, depth + 1)
    if depth < 40 and roll < 0.25:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if roll < 0.6:
        return rng.choice(_STRINGS)
    if roll < 0.9:
        return rng.choice(_NUMBERS)
    return rng.choice([True, False, None])


def _random_object(rng: random.Random, depth: int = 0) -> dict:
    return {rng.choice(_KEYS): _random_value(rng, depth) for _ in range(rng.randrange(5))}


def _texts(details: dict) -> list[str]:
    """The spellings an emitter might send: canonical, CPython's own, spaced, and with a duplicate key."""
    out = []
    for dump in (lambda d: canonical.dumps(d), lambda d: json.dumps(d, sort_keys=True, separators=(",", ":")),
                 lambda d: json.dumps(d), lambda d: json.dumps(d, sort_keys=True, separators=(",", ":"),
                                                                ensure_ascii=False)):  # fmt: skip
        with contextlib.suppress(ValueError, TypeError):  # NaN, Infinity: no such spelling
            out.append(dump(details))
    if out and len(out[0]) > 2:
        out.append(out[0][:-1] + "," + out[0][1:])  # every key twice
    return out


def _walk_result(text: str) -> tuple[str, tuple[str, ...]] | None:
    """What make_event's walk makes of details `text`: canonical text and masked paths, None if refused."""
    try:
        clean = sanitize(parse_details(text, "e", 1 << 20), "e")
        return canonical.dumps(clean.details, plain=clean.plain), clean.masked
    except (InvalidEvent, ValueError):
        return None


def test_unchanged_agrees_with_the_walk_on_random_documents() -> None:
    """Whenever the fast path says "nothing to do", the walk must store exactly the same text and mask
    nothing; random documents mix secrets, IPs, numbers JCS spells differently, escapes and depth."""
    rng = random.Random(20261201)
    fast = 0
    texts = [t for case in CASES for d in (case[1], case[2]) if isinstance(d, dict) for t in _texts(d)]
    for _ in range(4000):
        texts.extend(_texts(_random_object(rng)))
    for text in texts:
        if unchanged(text):
            fast += 1
            assert _walk_result(text) == (text, ()), text
    assert fast > len(texts) // 10  # the fast path is taken, not dead code


@pytest.mark.parametrize("text", [
    '{"a":1,":password":2}', '{"a":"x","b":{"token":"t"}}', '{"ip":"10.1.2.3"}', '{"v":"Bearer abc"}',
    '{"n":2.0}', '{"n":1e-05}', '{"n":0.00001}', '{"n":9007199254740993}', '{"n":NaN}', '{"b":1,"a":2}',
    '{"a":1,"a":1}', '{"a": 1}', '{"k":"\\u0000"}', '{"s":"\\ud800"}', '["not an object"]',
    "{" * 33 + "}" * 33, '{"é":1}', '{"to-ken":"t"}', '{"se_cret":"s"}', '{"a_u_t_h_o_r_i_z_a_t_i_o_n":"x"}',
])  # fmt: skip
def test_unchanged_refuses_what_the_walk_would_change_or_refuse(text: str) -> None:
    assert not unchanged(text)


class _Colour(enum.Enum):
    RED = "red"


class _Level(enum.IntEnum):
    HIGH = 3


class _Name(str):
    pass


# Values orjson writes its own way (or refuses) that the walk refuses or changes.
_NOT_PLAIN = [uuid.UUID(int=7), _Colour.RED, _Name("x"), (1, 2), datetime.now(UTC), 2**70, float("nan"),
              collections.OrderedDict(a=1), b"bytes", {1: "int key"}, object()]  # fmt: skip
_ODD = [*_NOT_PLAIN, _Level.HIGH, True, -0.0]  # ...and some the walk and orjson happen to agree on


def _walk_of_dict(details: dict) -> tuple[str, tuple[str, ...]] | None:
    try:
        clean = sanitize(details, "e")
        return canonical.dumps(clean.details, plain=clean.plain), clean.masked
    except (InvalidEvent, ValueError, TypeError):
        return None


def test_canonical_if_unchanged_agrees_with_the_walk_on_random_dicts() -> None:
    """The emitter's fast path (a dict in hand): whenever it returns a text, the walk stores exactly
    that text and masks nothing."""
    rng = random.Random(20261202)
    documents: list[dict] = [d for c in CASES for d in (c[1], c[2]) if isinstance(d, dict)]
    for _ in range(4000):
        document = _random_object(rng)
        if rng.random() < 0.2 and document:
            document[rng.choice(list(document))] = rng.choice(_ODD)
        documents.append(document)
    fast = 0
    for document in documents:
        text = canonical_if_unchanged(document)
        if text is not None:
            fast += 1
            assert _walk_of_dict(document) == (text, ()), document
    assert fast > len(documents) // 10


@pytest.mark.parametrize("value", _NOT_PLAIN, ids=lambda v: type(v).__name__)
def test_canonical_if_unchanged_leaves_what_is_not_plain_json_to_the_walk(value: object) -> None:
    assert canonical_if_unchanged({"v": value}) is None


def test_details_an_emitter_sanitized_take_the_fast_path() -> None:
    clean = sanitize({"client_ip": "10.1.2.77", "score": 78.5, "factors": {"device": 0.8}, "obligations": ["log"]})
    assert unchanged(canonical.dumps(clean.details, plain=clean.plain))
    assert canonical_if_unchanged(clean.details) == canonical.dumps(clean.details, plain=clean.plain)


def test_the_hints_name_a_part_of_every_secret_the_walk_knows() -> None:
    """The fast path runs the exact secret tests only when a hint is present: every secret word, pair and
    suffix of is_secret_key, and every kind of secret value, must contain one."""
    from ztmesh.audit.sanitize import SECRET_KEY_HINTS, SECRET_PAIRS, SECRET_VALUE_HINTS, SECRET_WORDS

    names = [*SECRET_WORDS, *("".join(pair) for pair in SECRET_PAIRS), "password", "apikey", "privatekey"]
    assert all(any(hint in name for hint in SECRET_KEY_HINTS) for name in names)
    values = ["Bearer x", "basic x", "Digest x", "Negotiate x", "eyJhbGciOi.eyJzdWIiOi.sig",
              "-----BEGIN PRIVATE KEY-----"]
    assert all(is_secret_value(v) and any(hint in v.lower() for hint in SECRET_VALUE_HINTS) for v in values)


def test_secret_words_split_by_a_separator_do_not_take_the_fast_path() -> None:
    """is_secret_key joins a key's words, so "to-ken" names a token as much as "token": the fast path must
    not keep what the walk erases (it did, until the hints were looked for in the letters alone)."""
    from ztmesh.audit.sanitize import SECRET_WORDS

    keys = [word[:cut] + sep + word[cut:] for word in SECRET_WORDS for cut in (1, len(word) // 2) for sep in "-_."]
    secret = [key for key in keys if is_secret_key(key)]
    assert len(secret) > 50
    for key in secret:
        text = canonical.dumps({key: "x", "n": 1})
        assert not unchanged(text), key
        assert sanitize({key: "x", "n": 1}).details == {"n": 1}


def test_integral_floats_are_written_as_the_walk_stores_them() -> None:
    assert canonical_if_unchanged({"a": 2.0, "b": -3.0, "c": 0.0, "d": 1.5}) == '{"a":2,"b":-3,"c":0,"d":1.5}'
    assert canonical_if_unchanged({"z": -0.0}) is None  # the walk decides (it stores 0)
