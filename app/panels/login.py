"""The gate before anything is shown: off on localhost, a password or an OIDC login beyond
it (see :mod:`mil_cyto.review.auth` for the secrets it reads)."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Mapping
from typing import Any

import streamlit as st

from mil_cyto.review.auth import auth_mode, password_ok

WRONG_PASSWORD_DELAY_S = 1.0
"""Pause after a wrong password (slows guessing)."""


def _secrets() -> Mapping[str, Any]:
    """Streamlit's secrets as a mapping (empty when no secrets.toml exists)."""
    try:
        return st.secrets.to_dict()
    except Exception:  # no secrets file, or an unreadable one: no login configured
        return {}


def gate() -> str | None:
    """Stop the script (``st.stop``) until the visitor has logged in where a login is
    needed. Returns the reviewer's identity when the login fixes it (OIDC), else None."""
    secrets = _secrets()
    address = st.get_option("server.address")
    mode = auth_mode(secrets, address)
    if mode == "none":
        return None
    if mode == "missing":
        st.sidebar.warning(
            f"Served on {address or 'every network interface'} without a login: anyone who "
            "reaches this port sees the photos. Set a password or an OIDC login in "
            ".streamlit/secrets.toml (app/README.md), or serve on 127.0.0.1."
        )
        return None
    if mode == "password":
        _password(str(secrets["review"]["password"]))
        return None
    return _oidc(secrets)


def _password(expected: str) -> None:
    if st.session_state.get("auth_ok"):
        return
    st.markdown("### mil-cyto review: log in")
    with st.form("login"):
        given = st.text_input("password", type="password", key="auth_password")
        submitted = st.form_submit_button("Log in")
    if submitted:
        if password_ok(given, expected):
            st.session_state["auth_ok"] = True
            st.session_state.pop("auth_password", None)
            st.rerun()
        time.sleep(WRONG_PASSWORD_DELAY_S)
        st.error("wrong password")
    st.stop()


def _oidc(secrets: Mapping[str, Any]) -> str:
    provider = (secrets.get("review", {}) or {}).get("oidc_provider")
    if getattr(st.user, "is_logged_in", False):
        st.sidebar.button("Log out", on_click=st.logout, key="logout")
        return str(st.user.get("email") or st.user.get("name") or st.user.get("sub") or "")
    st.markdown("### mil-cyto review: log in")
    if importlib.util.find_spec("authlib") is None:
        st.error("The OIDC login ([auth] in secrets.toml) needs Authlib: pip install Authlib")
    else:
        st.button("Log in", on_click=st.login, args=(provider,), key="login")
    st.stop()
    raise AssertionError("unreachable: st.stop() ends the script")
