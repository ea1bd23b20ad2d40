"""The OpenBao test server itself: ready when used, clients on their own loopback addresses, and
the socket device stanza that config/examples/socket.yaml documents."""

from __future__ import annotations

import re
import socket
import threading

import hvac
import orjson
import pytest

from conftest import ROOT
from openbao_server import FileDevice, OpenBaoServer, openbao  # noqa: F401
from secretscope.events import AccessEvent
from secretscope.sources.files import replay

pytestmark = pytest.mark.openbao


def test_clients_reach_the_server_from_their_own_address(openbao):  # noqa: F811
    root = openbao.client(source="127.0.0.42")
    root.secrets.kv.v2.create_or_update_secret("probe", secret={"value": "x"})
    root.sys.enable_auth_method("userpass")
    with pytest.raises(hvac.exceptions.InvalidRequest):
        openbao.client(token="", source="127.0.0.43").auth.userpass.login("nobody", "guess")
    events = [e for e in replay([openbao.audit_file]) if isinstance(e, AccessEvent)]
    write = [e for e in events if e.path == "secret/data/probe"]
    assert [e.remote_address for e in write] == ["127.0.0.42"] and write[0].is_root
    (login,) = [e for e in events if e.remote_address == "127.0.0.43"]
    assert login.path == "auth/userpass/login/nobody" and login.outcome == "failed"
    assert login.identity == "login:userpass/nobody"
    # the device's start-up self-test is the log's first line
    first = orjson.loads(openbao.audit_file.read_bytes().splitlines()[0])
    assert first["request"]["path"] == "sys/audit/test"


class LineCollector:
    """A TCP listener that keeps every line it is sent (a socket audit device's peer)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.data = bytearray()
        self.received = threading.Condition()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        with conn:
            while chunk := conn.recv(65536):
                with self.received:
                    self.data += chunk
                    self.received.notify_all()

    def wait_for(self, needle: bytes, timeout: float = 10) -> bool:
        with self.received:
            return self.received.wait_for(lambda: needle in self.data, timeout)


def example_socket_stanza(port: int) -> str:
    """The HCL block commented in config/examples/socket.yaml, pointed at ``port``."""
    text = (ROOT / "config" / "examples" / "socket.yaml").read_text()
    block = re.search(r'^#   (audit "socket".*?^#   \})$', text, re.S | re.M)
    assert block, "no audit \"socket\" stanza in config/examples/socket.yaml"
    hcl = "\n".join(line[4:] for line in block.group(0).splitlines())
    return hcl.replace("127.0.0.1:9090", f"127.0.0.1:{port}") + "\n"


def test_socket_example_stanza_streams_to_a_listener(tmp_path):
    collector = LineCollector()
    audit = tmp_path / "audit.log"
    stanza = example_socket_stanza(collector.port)
    with OpenBaoServer(tmp_path / "bao", [FileDevice("file", audit, hmac_accessor=False)],
                       extra_config=stanza) as bao:
        bao.client(source="127.0.0.42").sys.list_acl_policies()
        assert collector.wait_for(b'"remote_address":"127.0.0.42"')
    streamed = [orjson.loads(line) for line in bytes(collector.data).splitlines()]
    assert streamed[0]["request"]["path"] == "sys/audit/test"
    # hmac_accessor = "false" in the stanza: the socket device names tokens as the file does
    on_file = {orjson.loads(l)["request"].get("id"): orjson.loads(l).get("auth", {}).get("accessor")
               for l in audit.read_bytes().splitlines()}
    call = [d for d in streamed if d["request"].get("remote_address") == "127.0.0.42"][0]
    assert call["auth"]["accessor"] == on_file[call["request"]["id"]]
