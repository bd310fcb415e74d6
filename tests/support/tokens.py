"""A throwaway identity provider for gateway tests and benchmarks: an ES256 key, its JWKS for Envoy's
jwt_authn filter, and signed tokens (compact JWS, RFC 7515/7519) built with `cryptography` alone."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

# What the shipped gateway's `ztmesh_idp` provider expects (deploy/envoy/envoy-gateway.yaml).
ISSUER = "https://idp.ztmesh.local"
AUDIENCE = "ztmesh-gateway"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer:
    def __init__(self, kid: str = "test-idp-1", issuer: str = ISSUER, audience: str = AUDIENCE) -> None:
        self.kid, self.issuer, self.audience = kid, issuer, audience
        self._key = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> str:
        numbers = self._key.public_key().public_numbers()
        key = {
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": _b64(numbers.x.to_bytes(32, "big")), "y": _b64(numbers.y.to_bytes(32, "big")),
        }  # fmt: skip
        return json.dumps({"keys": [key]})

    def token(self, claims: dict[str, Any], ttl_s: int = 3600) -> str:
        now = int(time.time())
        payload = {"iss": self.issuer, "aud": self.audience, "iat": now, "nbf": now - 5, "exp": now + ttl_s, **claims}
        header = {"alg": "ES256", "typ": "JWT", "kid": self.kid}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
        r, s = decode_dss_signature(self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def clinician(**changes: Any) -> dict[str, Any]:
    """Claims of Dr. Ana (CRM/SP, AAL2 with password + OTP, on call) on a compliant managed laptop: the
    default pack allows her patient data for treatment (trust 91.3 from the hospital network)."""
    claims: dict[str, Any] = {
        "sub": "dr.ana",
        "roles": ["physician", "on_call"],
        "acr": "aal2",
        "amr": ["pwd", "otp"],
        "registration": {"council": "CRM", "region": "SP", "number": "123456", "status": "active"},
        "device": {
            "id": "laptop-7", "managed": True, "compliant": True, "os": "linux", "patch_age_days": 3,
            "disk_encrypted": True, "endpoint_protection": True,
        },
    }  # fmt: skip
    claims.update(changes)
    return claims
