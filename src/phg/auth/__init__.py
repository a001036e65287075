"""Authorization for FHIR destinations: SMART Backend Services (httpx.Auth), keys and JWKS."""

from phg.auth.assertion import client_assertion
from phg.auth.discovery import SmartConfiguration, discover
from phg.auth.keys import SigningKey, generate_key, jwks, load_key
from phg.auth.smart import AccessToken, SmartBackendAuth

__all__ = [
    "AccessToken",
    "SigningKey",
    "SmartBackendAuth",
    "SmartConfiguration",
    "client_assertion",
    "discover",
    "generate_key",
    "jwks",
    "load_key",
]
