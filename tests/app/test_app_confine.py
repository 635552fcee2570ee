"""The review app's runs root (no Streamlit): typed paths, '..', symlinks out and absolute
paths outside are refused; and the login decision (localhost, password, OIDC)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

from mil_cyto.errors import MilCytoError
from mil_cyto.review.auth import auth_mode, is_loopback, password_ok
from mil_cyto.review.confine import RunsRoot
from mil_cyto.review.runs import REQUIRED
from mil_cyto.review.upload import MAX_UPLOAD_BYTES

REPO = Path(__file__).resolve().parents[2]


def _fake_run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in REQUIRED:
        (folder / name).write_text("{}")
    return folder


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """``root/{a, group/b}`` runs, ``outside/secret`` run beside the root, symlinks from
    inside the root to it and to a run inside."""
    root = tmp_path / "runs"
    a = _fake_run(root / "a")
    b = _fake_run(root / "group" / "b")
    secret = _fake_run(tmp_path / "outside" / "secret")
    (root / "escape").symlink_to(secret, target_is_directory=True)
    (root / "escape_dir").symlink_to(tmp_path / "outside", target_is_directory=True)
    (root / "alias").symlink_to(a, target_is_directory=True)  # stays inside: fine
    return {"root": root, "a": a, "b": b, "secret": secret}


def test_runs_below_the_root_are_listed_and_nothing_outside(layout) -> None:
    root = RunsRoot.open(layout["root"])
    runs = root.runs()
    assert runs == sorted([layout["a"].resolve(), layout["b"].resolve()])
    assert [root.label(p) for p in runs] == ["a", "group/b"]
    assert layout["secret"].resolve() not in runs  # the symlinks out are never followed


@pytest.mark.parametrize("typed", ["a", "group/b", "./group/b", " a ", "alias"])
def test_paths_inside_the_root_open(layout, typed: str) -> None:
    root = RunsRoot.open(layout["root"])
    assert root.resolve(typed).is_relative_to(root.path)
    assert root.resolve(str(layout["b"])) == layout["b"].resolve()  # absolute, inside


@pytest.mark.parametrize(
    ("typed", "why"),
    [
        ("../outside/secret", "'..' may not be used"),
        ("group/../../outside/secret", "'..' may not be used"),
        ("a/..", "'..' may not be used"),  # even when it would stay inside
        ("escape", "symlink that leads outside"),
        ("escape_dir/secret", "symlink that leads outside"),
        ("/etc", "a path outside the runs root"),
    ],
)
def test_paths_leaving_the_root_are_refused(layout, typed: str, why: str) -> None:
    root = RunsRoot.open(layout["root"])
    with pytest.raises(MilCytoError, match=why):
        root.resolve(typed)


def test_absolute_paths_outside_and_non_runs_are_refused(layout) -> None:
    root = RunsRoot.open(layout["root"])
    with pytest.raises(MilCytoError, match="a path outside the runs root"):
        root.resolve(str(layout["secret"]))
    with pytest.raises(MilCytoError, match="not a finished run"):
        root.resolve("group")
    with pytest.raises(MilCytoError, match="not a finished run"):
        root.resolve("")  # the root itself holds no run here
    assert not root.contains(layout["root"] / "escape")
    assert root.contains(layout["root"] / "alias")
    with pytest.raises(MilCytoError, match="not a folder"):
        RunsRoot.open(layout["root"] / "missing")


def test_a_single_run_is_its_own_root(layout) -> None:
    root = RunsRoot.open(layout["a"])
    assert root.runs() == [layout["a"].resolve()]
    assert root.resolve(".") == layout["a"].resolve()
    with pytest.raises(MilCytoError, match="'..'"):
        root.resolve("../group/b")


def test_login_is_off_on_localhost_and_asked_beyond_it() -> None:
    password = {"review": {"password": "s3cret"}}
    oidc = {"auth": {"redirect_uri": "http://h:8501/oauth2callback", "cookie_secret": "x"}}
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback(None) and not is_loopback("")
    assert auth_mode(password, "127.0.0.1") == "none"
    assert auth_mode(password, "0.0.0.0") == "password"
    assert auth_mode(password, None) == "password"  # Streamlit's default binds everything
    assert auth_mode({**password, **oidc}, "10.0.0.5") == "oidc"
    assert auth_mode({}, "0.0.0.0") == "missing"
    forced = {"review": {"password": "s3cret", "auth_on_localhost": True}}
    assert auth_mode(forced, "127.0.0.1") == "password"
    assert password_ok("s3cret", "s3cret")
    assert not password_ok("s3cre", "s3cret") and not password_ok("", "")


def test_project_server_config_binds_localhost_and_limits_uploads() -> None:
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert config["server"]["maxUploadSize"] * 2**20 == MAX_UPLOAD_BYTES
