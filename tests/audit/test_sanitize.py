"""Sanitization table: secrets dropped at any depth, IPs cut to /24 and /48, every path reported."""

from __future__ import annotations

import pytest

from ztmesh.audit.sanitize import is_secret_key, mask_ips, sanitize

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
