"""RFC 8555 6.2: a request's flattened JWS, with alg, nonce, url and jwk/kid from the protected header only."""

from __future__ import annotations

import json
from typing import Any

import josepy as jose
from acme import jws as acme_jws

from .attest_errors import Refusal

JOSE = "application/jose+json"
ALGORITHMS = ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512")


def parse_jws(body: bytes, url: str) -> tuple[jose.JWS, Any]:
    """The JWS and its protected header, refused unless it is flattened, for `url`, with a known algorithm."""
    try:
        raw = json.loads(body)
    except ValueError:
        raise Refusal("malformed", "request is not a flattened JWS") from None
    if not isinstance(raw, dict) or set(raw) != {"protected", "payload", "signature"}:
        if isinstance(raw, dict) and "header" in raw:
            raise Refusal("malformed", "the JWS unprotected header must not be used (RFC 8555 6.2): alg, nonce, "
                                       "url, jwk and kid belong in the protected header")
        raise Refusal("malformed", "request is not a flattened JWS (exactly protected, payload, signature)")
    try:
        jws = acme_jws.JWS.from_json(raw)
    except Exception:  # noqa: BLE001 - josepy DeserializationError, bad base64, bad header JSON
        raise Refusal("malformed", "request is not a flattened JWS") from None
    header: Any = jws.signature.combined  # no unprotected header (refused above): the protected one alone
    if header.alg is None or header.alg.name not in ALGORITHMS:
        raise Refusal("badSignatureAlgorithm", f"unsupported JWS algorithm {getattr(header.alg, 'name', None)}",
                      extra={"algorithms": list(ALGORITHMS)})
    if header.url != url:
        raise Refusal("unauthorized", f"JWS url {header.url!r} is not this resource {url!r}")
    return jws, header


def signature_verifies(jws: jose.JWS, key: jose.JWK) -> bool:
    try:
        return bool(jws.verify(key))
    except Exception:  # noqa: BLE001 - key/algorithm mismatch
        return False


__all__ = ["ALGORITHMS", "JOSE", "parse_jws", "signature_verifies"]
