"""The review app's server binds to 127.0.0.1 only by default (the project's
``.streamlit/config.toml``), checked from the kernel's own socket table."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from app_helpers import serve_app

pytestmark = pytest.mark.skipif(
    not Path("/proc/net/tcp").is_file(), reason="reads Linux's /proc/net/tcp"
)

LISTEN = "0A"


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN state on ``port`` (IPv4 and IPv6)."""
    found: set[str] = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        path = Path(table)
        if not path.is_file():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            address_hex, port_hex = local.split(":")
            if state != LISTEN or int(port_hex, 16) != port:
                continue
            raw = bytes.fromhex(address_hex)
            # the kernel prints each 32-bit word in host byte order
            words = [raw[i : i + 4][::-1] if sys.byteorder == "little" else raw[i : i + 4]
                     for i in range(0, len(raw), 4)]  # fmt: skip
            found.add(socket.inet_ntop(family, b"".join(words)))
    return found


def test_server_listens_on_localhost_only_by_default(tmp_path: Path) -> None:
    with serve_app(args=["--runs-root", str(tmp_path)], address=None, timeout=60) as url:
        port = urlparse(url).port
        assert port is not None
        addresses = listening_addresses(port)
    assert addresses == {"127.0.0.1"}, addresses  # not 0.0.0.0, not ::


def test_the_socket_table_reader_sees_a_wildcard_bind() -> None:
    """The reader above would notice a server bound to every interface."""
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        assert listening_addresses(sock.getsockname()[1]) == {"0.0.0.0"}
