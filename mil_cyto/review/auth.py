"""Who may use the review app: off on localhost, a login when served beyond it.

Two ways, both read from Streamlit's secrets (``.streamlit/secrets.toml`` beside the
config, never in the repository):

- ``[auth]`` with ``redirect_uri``, ``cookie_secret`` and a provider's ``client_id``,
  ``client_secret``, ``server_metadata_url``: Streamlit's own OIDC login (``st.login``;
  needs ``pip install Authlib``); the reviewer's name is the identity's e-mail.
- ``[review] password = "..."``: one shared password, compared in constant time.

``[review] auth_on_localhost = true`` asks for the login on localhost too (for a server
behind a reverse proxy on the same machine). Nothing here imports Streamlit.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any, Literal

AuthMode = Literal["none", "password", "oidc", "missing"]
"""``missing``: served beyond localhost and no login configured."""

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_loopback(address: str | None) -> bool:
    """True when the server binds a loopback address only (``None`` or "" binds all)."""
    if not address:
        return False
    return address in LOOPBACK or address.startswith("127.")


def auth_mode(secrets: Mapping[str, Any], server_address: str | None) -> AuthMode:
    """Which login the app asks for, from the secrets and the server's bind address."""
    review = secrets.get("review", {}) or {}
    if is_loopback(server_address) and not review.get("auth_on_localhost", False):
        return "none"
    auth = secrets.get("auth", {}) or {}
    if auth.get("redirect_uri") and auth.get("cookie_secret"):
        return "oidc"
    if review.get("password"):
        return "password"
    return "missing"


def password_ok(given: str, expected: str) -> bool:
    """Constant-time comparison of a typed password with the configured one."""
    if not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8"), str(expected).encode("utf-8"))
