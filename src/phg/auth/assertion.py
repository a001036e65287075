"""The private_key_jwt client assertion (RFC 7523 section 3; SMART App Launch 2.2.0,
client-confidential-asymmetric, "Authenticating to the Token endpoint")."""

from __future__ import annotations

import secrets
import time

from phg.auth.keys import SigningKey

MAX_LIFETIME = 300  # SMART: exp "no more than five minutes in the future"


def client_assertion(
    key: SigningKey,
    client_id: str,
    token_url: str,
    *,
    now: int | None = None,
    jti: str | None = None,
    lifetime: int = MAX_LIFETIME,
    jku: str | None = None,
) -> str:
    """Sign a client assertion JWT for one token request.

    Claims, in the spec example's order: ``iss`` = ``sub`` = client_id, ``aud`` = the token
    endpoint URL (not the FHIR base: a common implementer mistake), ``exp`` = now + lifetime
    (at most 300 s), ``jti`` a fresh 256-bit random nonce unless given. Call it for every token
    request, retries included: servers reject a reused ``jti``. ``jku`` (optional) goes into the
    header: it must equal the JWKS URL registered for the client.
    """
    if not 0 < lifetime <= MAX_LIFETIME:
        raise ValueError(f"assertion lifetime must be 1..{MAX_LIFETIME} s, got {lifetime}")
    issued = int(time.time()) if now is None else now
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": issued + lifetime,
        "jti": jti if jti is not None else secrets.token_urlsafe(32),
    }
    return key.sign(claims, jku=jku)
