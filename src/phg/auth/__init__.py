"""Authorization for FHIR destinations: one token cache (TokenAuth) composed with a grant (client
credentials, password) and a client authentication (SMART Backend Services' signed assertion,
client secret basic/post, a public client), a static bearer token, keys and key rotation, JWKS
publication, dynamic registration (RFC 7591/7592), TLS client settings and encrypted envelopes.
``build_auth`` turns the [auth] settings into the right httpx.Auth."""

from phg.auth.assertion import client_assertion
from phg.auth.discovery import SmartConfiguration, discover
from phg.auth.factory import build_auth
from phg.auth.keyring import KeyRing
from phg.auth.keys import SigningKey, generate_key, jwks, load_key
from phg.auth.secret import ClientSecret, PasswordGrant, PublicClient, StaticBearerAuth
from phg.auth.smart import PrivateKeyJwt
from phg.auth.token import AccessToken, ClientCredentials, TokenAuth

__all__ = [
    "AccessToken",
    "ClientCredentials",
    "ClientSecret",
    "KeyRing",
    "PasswordGrant",
    "PrivateKeyJwt",
    "PublicClient",
    "SigningKey",
    "SmartConfiguration",
    "StaticBearerAuth",
    "TokenAuth",
    "build_auth",
    "client_assertion",
    "discover",
    "generate_key",
    "jwks",
    "load_key",
]
