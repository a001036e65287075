"""Authorization for FHIR destinations: SMART Backend Services, client secrets, the password grant,
static bearer tokens (all httpx.Auth over one token cache), keys and key rotation, JWKS publication,
dynamic registration (RFC 7591/7592), TLS client settings and encrypted envelopes."""

from phg.auth.assertion import client_assertion
from phg.auth.discovery import SmartConfiguration, discover
from phg.auth.keyring import KeyRing
from phg.auth.keys import SigningKey, generate_key, jwks, load_key
from phg.auth.secret import ClientSecretAuth, PasswordAuth, StaticBearerAuth
from phg.auth.smart import SmartBackendAuth
from phg.auth.token import AccessToken, TokenAuth

__all__ = [
    "AccessToken",
    "ClientSecretAuth",
    "KeyRing",
    "PasswordAuth",
    "SigningKey",
    "SmartBackendAuth",
    "SmartConfiguration",
    "StaticBearerAuth",
    "TokenAuth",
    "client_assertion",
    "discover",
    "generate_key",
    "jwks",
    "load_key",
]
