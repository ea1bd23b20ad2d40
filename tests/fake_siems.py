"""Local stand-ins for the SIEM and paging products the delivery sinks talk to.

Each is a real server on 127.0.0.1 (ephemeral port, threaded, TCP_NODELAY, optional TLS with a
CA made for the test session) that checks credentials the way the product does, answers with the
product's status codes and bodies, and records what it accepted keyed by finding id. Every HTTP
server has a :class:`Script` of failures to inject into its next requests::

    server.script.fail(2, 503)                       # next 2 requests: HTTP 503
    server.script.fail(1, 429, headers={"Retry-After": "1"})
    server.script.slow(1, 2.0)                       # answer normally, but after 2 s
    server.script.drop(1)                            # close the connection without answering
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import standardwebhooks

# ---------------------------------------------------------------------------------------------
# A CA for the test session


@dataclass(frozen=True)
class LocalCA:
    """A throwaway CA and a server certificate it signed for 127.0.0.1 and localhost."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def make_local_ca(directory: Path) -> LocalCA:
    """Generate the CA and server certificate with the ``openssl`` CLI (P-256 keys, 2 days)."""
    d = Path(directory)
    ext = d / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=critical,digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *args: subprocess.run(["openssl", *args], cwd=d, check=True,  # noqa: E731
                                       capture_output=True)
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=secretscope test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", str(ext))
    return LocalCA(d / "ca.pem", d / "server.pem", d / "server.key")


# ---------------------------------------------------------------------------------------------
# Failure scripts and the HTTP server base


@dataclass(frozen=True)
class Action:
    kind: str  # "status", "slow" or "drop"
    status: int = 0
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


class Script:
    """Failures to inject, one per request, in order; empty means behave normally."""

    def __init__(self) -> None:
        self._actions: deque[Action] = deque()
        self._lock = threading.Lock()

    def fail(self, n: int = 1, status: int = 503, body: bytes | str | dict = b"",
             headers: dict[str, str] | None = None) -> None:
        if isinstance(body, dict):
            body = json.dumps(body)
        raw = body.encode() if isinstance(body, str) else body
        self._add(n, Action("status", status, raw, dict(headers or {})))

    def slow(self, n: int = 1, seconds: float = 1.0) -> None:
        self._add(n, Action("slow", seconds=seconds))

    def drop(self, n: int = 1) -> None:
        self._add(n, Action("drop"))

    def clear(self) -> None:
        with self._lock:
            self._actions.clear()

    def _add(self, n: int, action: Action) -> None:
        with self._lock:
            self._actions.extend([action] * n)

    def next(self) -> Action | None:
        with self._lock:
            return self._actions.popleft() if self._actions else None


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes


Response = tuple[int, dict[str, str], bytes]


def json_response(status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(obj).encode()
    return status, {"Content-Type": "application/json", **(headers or {})}, body


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, handler, tls: ssl.SSLContext | None) -> None:
        self.tls = tls
        super().__init__(("127.0.0.1", 0), handler)

    def get_request(self):
        sock, addr = self.socket.accept()
        if self.tls is not None:  # handshake later, in the handler's thread, not in accept()
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address) -> None:
        pass  # clients that time out, drop, or reject our certificate are expected here


class FakeServer:
    """A threaded HTTP server on 127.0.0.1 delegating each request to :meth:`handle`."""

    def __init__(self, tls: LocalCA | None = None) -> None:
        self.script = Script()
        self.requests: list[Request] = []  # every request, including scripted failures
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30

            def setup(self) -> None:
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                super().setup()

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                owner._serve(self)

            do_GET = do_PUT = do_POST

        self._httpd = _HTTPServer(Handler, tls.server_context() if tls else None)
        self.scheme = "https" if tls else "http"
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def handle(self, req: Request) -> Response:
        raise NotImplementedError

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        parts = urlsplit(h.path)
        req = Request(h.command, parts.path, parse_qs(parts.query),
                      {k.lower(): v for k, v in h.headers.items()}, body)
        with self.lock:
            self.requests.append(req)
        action = self.script.next()
        if action is not None and action.kind == "drop":
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if action is not None and action.kind == "slow":
            time.sleep(action.seconds)
        if action is not None and action.kind == "status":
            status, headers, out = action.status, action.headers, action.body
        else:
            with self.lock:
                status, headers, out = self.handle(req)
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(out)))
        h.end_headers()
        h.wfile.write(out)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def finding_version(obj: Any) -> int:
    """The finding version inside a rendered document (``unmapped.secretscope.version`` in OCSF,
    ``secretscope.version`` in ECS), 1 when it names none."""
    if isinstance(obj, dict):
        ss = obj.get("secretscope")
        if isinstance(ss, dict) and isinstance(ss.get("version"), int):
            return ss["version"]
        for value in obj.values():
            found = finding_version(value)
            if found:
                return found
    return 0 if not isinstance(obj, dict) else 1 if finding_uid(obj) else 0


def finding_key(obj: Any) -> tuple[str | None, int]:
    """(finding id, version) of a rendered document: what each version is delivered under."""
    return finding_uid(obj), finding_version(obj) or 1


def finding_uid(obj: Any) -> str | None:
    """The finding id inside a rendered document, wherever the rendering put it."""
    if isinstance(obj, dict):
        for key in ("finding_info", "metadata"):
            inner = obj.get(key)
            if isinstance(inner, dict) and isinstance(inner.get("uid"), str):
                return inner["uid"]
        for value in obj.values():
            found = finding_uid(value)
            if found:
                return found
    return None


# ---------------------------------------------------------------------------------------------
# Products


class SplunkHecServer(FakeServer):
    """HTTP Event Collector: ``/services/collector/event``, ``Authorization: Splunk <token>``,
    concatenated JSON events; replies ``{"text", "code"}`` as Splunk does."""

    def __init__(self, token: str, tls: LocalCA | None = None) -> None:
        super().__init__(tls)
        self.token = token
        self.events: dict[tuple[str, int], dict] = {}  # (finding id, version) -> event
        self.received: Counter = Counter()  # (finding id, version) -> times indexed
        self.batches: list[int] = []  # events per accepted request
        self.reject_ids: set[str] = set()  # events answered as "Invalid data format"

    def handle(self, req: Request) -> Response:
        if req.path != "/services/collector/event":
            return json_response(404, {"text": "The requested URL was not found on this server.",
                                       "code": 404})
        auth = req.headers.get("authorization", "")
        if not auth:
            return json_response(401, {"text": "Token is required", "code": 2})
        if not auth.startswith("Splunk "):
            return json_response(401, {"text": "Invalid authorization", "code": 3})
        if auth[len("Splunk "):] != self.token:
            return json_response(403, {"text": "Invalid token", "code": 4})
        text = req.body.decode()
        if not text.strip():
            return json_response(400, {"text": "No data", "code": 5})
        decoder, pos, events = json.JSONDecoder(), 0, []
        while pos < len(text):
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos == len(text):
                break
            try:
                event, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError:
                return self._invalid(events, len(events), "Invalid data format", 6)
            events.append(event)
        for i, event in enumerate(events):
            if not isinstance(event, dict) or "event" not in event:
                return self._invalid(events, i, "Event field is required", 12)
            if finding_uid(event) in self.reject_ids:
                return self._invalid(events, i, "Invalid data format", 6)
        self._index(events)
        return json_response(200, {"text": "Success", "code": 0})

    def _invalid(self, events: list, i: int, text: str, code: int) -> Response:
        self._index(events[:i])  # those before the bad one are indexed (the worst case for us)
        return json_response(400, {"text": text, "code": code, "invalid-event-number": i})

    def _index(self, events: list) -> None:
        for event in events:
            key = finding_key(event)
            self.events[key if key[0] else (f"no-id-{len(self.events)}", 1)] = event
            self.received[key] += 1
        if events:
            self.batches.append(len(events))


class ElasticServer(FakeServer):
    """``POST /_bulk`` with NDJSON; ``Authorization: ApiKey <key>``; ``create`` of an existing
    ``_id`` is a 409 version conflict, and so is an ``index`` with ``version_type: external``
    whose ``version`` is not above the stored one (Elasticsearch's external versioning).
    ``fail_items`` maps ids, or (id, version) pairs, to a per-item status to answer (in a 200
    response with ``errors: true``)."""

    ERROR_TYPES = {429: "es_rejected_execution_exception", 400: "document_parsing_exception",
                   503: "unavailable_shards_exception", 500: "internal_server_error"}

    def __init__(self, api_key: str, tls: LocalCA | None = None) -> None:
        super().__init__(tls)
        self.api_key = api_key
        self.indices: dict[str, dict[str, dict]] = {}
        self.versions: dict[tuple[str, str], int] = {}  # (index, _id) -> stored _version
        self.writes: Counter = Counter()  # (_id, version) -> times written
        self.fail_items: dict[str, int] = {}

    def handle(self, req: Request) -> Response:
        if req.path != "/_bulk" or req.method != "POST":
            return json_response(404, {"error": "no handler", "status": 404})
        if req.headers.get("authorization") != f"ApiKey {self.api_key}":
            return json_response(401, {"error": {"type": "security_exception",
                                                 "reason": "unable to authenticate"},
                                       "status": 401})
        ctype = req.headers.get("content-type", "").split(";")[0]
        if ctype not in ("application/x-ndjson", "application/json"):
            return json_response(406, {"error": f"Content-Type header [{ctype}] is not supported",
                                       "status": 406})
        if not req.body.endswith(b"\n"):
            return json_response(400, {"status": 400, "error": {
                "type": "illegal_argument_exception",
                "reason": "The bulk request must be terminated by a newline [\\n]"}})
        lines = req.body.decode().splitlines()
        items = []
        for action_line, doc_line in zip(lines[0::2], lines[1::2]):
            (op, meta), = json.loads(action_line).items()
            index, doc_id = meta["_index"], meta["_id"]
            docs = self.indices.setdefault(index, {})
            base = {"_index": index, "_id": doc_id}
            status = self.fail_items.get((doc_id, meta.get("version")),
                                         self.fail_items.get(doc_id))
            if status is not None:
                items.append({op: {**base, "status": status, "error": {
                    "type": self.ERROR_TYPES.get(status, "exception"),
                    "reason": f"injected failure {status}"}}})
            elif op == "create" and doc_id in docs:
                items.append({op: {**base, "status": 409, "error": {
                    "type": "version_conflict_engine_exception",
                    "reason": f"[{doc_id}]: version conflict, document already exists "
                              "(current version [1])"}}})
            elif (meta.get("version_type") == "external"
                  and meta.get("version", 0) <= self.versions.get((index, doc_id), 0)):
                current = self.versions[(index, doc_id)]
                items.append({op: {**base, "status": 409, "error": {
                    "type": "version_conflict_engine_exception",
                    "reason": f"[{doc_id}]: version conflict, current version [{current}] is "
                              f"higher or equal to the one provided [{meta['version']}]"}}})
            else:
                created = doc_id not in docs
                docs[doc_id] = json.loads(doc_line)
                version = meta.get("version", self.versions.get((index, doc_id), 0) + 1)
                self.versions[(index, doc_id)] = version
                self.writes[(doc_id, version)] += 1
                items.append({op: {**base, "_version": version,
                                   "result": "created" if created else "updated",
                                   "status": 201 if created else 200}})
        errors = any("error" in next(iter(i.values())) for i in items)
        return json_response(200, {"took": 3, "errors": errors, "items": items})


class AzureServer(FakeServer):
    """Microsoft Entra token endpoint and the Logs Ingestion API on one port (point both
    ``authority`` and ``endpoint`` at :attr:`url`)."""

    MAX_BYTES = 1_000_000

    def __init__(self, tenant_id: str, client_id: str, client_secret: str, rule_id: str,
                 stream: str, tls: LocalCA | None = None, token_lifetime: int = 3599) -> None:
        super().__init__(tls)
        self.tenant_id, self.client_id, self.client_secret = tenant_id, client_id, client_secret
        self.rule_id, self.stream, self.token_lifetime = rule_id, stream, token_lifetime
        self.valid_tokens: set[str] = set()
        self.tokens_issued = 0
        self.records: list[dict] = []
        self.body_sizes: list[int] = []  # bytes of each accepted ingestion request

    def revoke_tokens(self) -> None:
        with self.lock:
            self.valid_tokens.clear()

    def handle(self, req: Request) -> Response:
        if req.path == f"/{self.tenant_id}/oauth2/v2.0/token":
            return self._token(req)
        if req.path == f"/dataCollectionRules/{self.rule_id}/streams/{self.stream}":
            return self._ingest(req)
        return json_response(404, {"error": {"code": "NotFound", "message": "no such rule"}})

    def _token(self, req: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs(req.body.decode()).items()}
        if form.get("grant_type") != "client_credentials":
            return json_response(400, {"error": "unsupported_grant_type"})
        if (form.get("client_id"), form.get("client_secret")) != (self.client_id,
                                                                   self.client_secret):
            return json_response(401, {"error": "invalid_client", "error_description":
                                       "AADSTS7000215: Invalid client secret provided."})
        if form.get("scope") != "https://monitor.azure.com/.default":
            return json_response(400, {"error": "invalid_scope"})
        token = secrets.token_urlsafe(32)
        self.valid_tokens.add(token)
        self.tokens_issued += 1
        return json_response(200, {"token_type": "Bearer", "expires_in": self.token_lifetime,
                                   "ext_expires_in": self.token_lifetime,
                                   "access_token": token})

    def _ingest(self, req: Request) -> Response:
        if req.query.get("api-version") != ["2023-01-01"]:
            return json_response(400, {"error": {"code": "InvalidApiVersion"}})
        auth = req.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.valid_tokens:
            return json_response(401, {"error": {"code": "InvalidToken",
                                                 "message": "The access token is invalid."}})
        if len(req.body) > self.MAX_BYTES:
            return json_response(413, {"error": {"code": "ContentLengthLimitExceeded",
                                                 "message": "Maximum request size is 1 MB"}})
        try:
            records = json.loads(req.body)
        except ValueError:
            records = None
        if not isinstance(records, list) or req.headers.get("content-type") != "application/json":
            return json_response(400, {"error": {"code": "InvalidRequestBody"}})
        self.records.extend(records)
        self.body_sizes.append(len(req.body))
        return 204, {}, b""


class SecOpsServer(FakeServer):
    """Google SecOps webhook feed (``...:importPushLogs``): NDJSON body, ``X-goog-api-key`` and
    ``X-Webhook-Access-Key``; at most ``max_bytes`` per request (the product takes 4 MB)."""

    def __init__(self, api_key: str, access_key: str | None, tls: LocalCA | None = None,
                 max_bytes: int = 4_000_000) -> None:
        super().__init__(tls)
        self.api_key, self.access_key, self.max_bytes = api_key, access_key, max_bytes
        self.events: dict[tuple[str, int], dict] = {}  # (finding id, version) -> document
        self.received: Counter = Counter()
        self.body_sizes: list[int] = []

    @property
    def feed_url(self) -> str:
        return self.url + "/v1alpha/projects/p/locations/us/instances/i/feeds/f:importPushLogs"

    def handle(self, req: Request) -> Response:
        if not req.path.endswith(":importPushLogs"):
            return json_response(404, {"error": {"code": 404, "status": "NOT_FOUND"}})
        if req.headers.get("x-goog-api-key") != self.api_key:
            return json_response(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                                 "message": "API key not valid."}})
        if self.access_key and req.headers.get("x-webhook-access-key") != self.access_key:
            return json_response(403, {"error": {"code": 403, "status": "PERMISSION_DENIED",
                                                 "message": "invalid secret"}})
        if len(req.body) > self.max_bytes:
            return json_response(413, {"error": {"code": 413, "message": "Request too large"}})
        docs = [json.loads(line) for line in req.body.decode().split("\n") if line.strip()]
        for doc in docs:
            key = finding_key(doc)
            self.events[key if key[0] else (f"no-id-{len(self.events)}", 1)] = doc
            self.received[key] += 1
        self.body_sizes.append(len(req.body))
        return json_response(200, {})


class SlackServer(FakeServer):
    """An incoming webhook: the secret is the URL path; answers ``ok`` or Slack's error words."""

    def __init__(self, tls: LocalCA | None = None) -> None:
        super().__init__(tls)
        self.path = f"/services/T0SECRET/B0SECRET/{secrets.token_urlsafe(18)}"
        self.messages: list[dict] = []

    @property
    def webhook_url(self) -> str:
        return self.url + self.path

    def handle(self, req: Request) -> Response:
        if req.path != self.path:
            return 404, {"Content-Type": "text/html"}, b"no_service"
        try:
            msg = json.loads(req.body)
        except ValueError:
            return 400, {"Content-Type": "text/html"}, b"invalid_payload"
        if not isinstance(msg, dict) or not (msg.get("text") or msg.get("blocks")):
            return 400, {"Content-Type": "text/html"}, b"no_text"
        self.messages.append(msg)
        return 200, {"Content-Type": "text/html"}, b"ok"


class PagerDutyServer(FakeServer):
    """Events API v2 ``/v2/enqueue``: validates the event, groups alerts by ``dedup_key``."""

    SEVERITIES = {"critical", "error", "warning", "info"}

    def __init__(self, routing_key: str, tls: LocalCA | None = None) -> None:
        super().__init__(tls)
        self.routing_key = routing_key
        self.alerts: dict[str, list[dict]] = {}  # dedup_key -> events received

    @property
    def enqueue_url(self) -> str:
        return self.url + "/v2/enqueue"

    def handle(self, req: Request) -> Response:
        if req.path != "/v2/enqueue":
            return json_response(404, {"status": "not found"})
        try:
            ev = json.loads(req.body)
        except ValueError:
            return self._invalid("Event object is invalid", "JSON parse error")
        if not isinstance(ev, dict):
            return self._invalid("Event object is invalid", "not an object")
        if ev.get("routing_key") != self.routing_key:
            return self._invalid("Invalid routing key", "routing_key is not recognised")
        if ev.get("event_action") not in ("trigger", "acknowledge", "resolve"):
            return self._invalid("Event object is invalid", "'event_action' is invalid")
        if ev["event_action"] == "trigger":  # acknowledge and resolve carry no payload
            p = ev.get("payload") or {}
            missing = [k for k in ("summary", "source", "severity") if not p.get(k)]
            if missing:
                return self._invalid("Event object is invalid",
                                     f"'payload.{missing[0]}' is missing")
            if p["severity"] not in self.SEVERITIES or len(p["summary"]) > 1024:
                return self._invalid("Event object is invalid", "'payload' is invalid")
        elif not ev.get("dedup_key"):
            return self._invalid("Event object is invalid", "'dedup_key' is missing")
        key = ev.get("dedup_key") or secrets.token_hex(16)
        self.alerts.setdefault(key, []).append(ev)
        return json_response(202, {"status": "success", "message": "Event processed",
                                   "dedup_key": key})

    @staticmethod
    def _invalid(message: str, error: str) -> Response:
        return json_response(400, {"status": "invalid event", "message": message,
                                   "errors": [error]})


class WebhookServer(FakeServer):
    """A receiver verifying Standard Webhooks signatures with the reference implementation
    (``standardwebhooks.Webhook``: HMAC-SHA256 of ``id.timestamp.body``, 5 minute tolerance);
    stores payloads by ``webhook-id``."""

    def __init__(self, tls: LocalCA | None = None) -> None:
        super().__init__(tls)
        self.secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        self.messages: dict[str, dict] = {}
        self.received: Counter = Counter()  # webhook-id -> accepted requests
        self.deliveries = 0  # accepted requests, re-sends included

    def handle(self, req: Request) -> Response:
        msg_id = req.headers.get("webhook-id")
        if not msg_id or not req.headers.get("webhook-timestamp") or \
                not req.headers.get("webhook-signature"):
            return 400, {}, b"missing webhook headers"
        try:
            payload = standardwebhooks.Webhook(self.secret).verify(req.body, req.headers)
        except standardwebhooks.WebhookVerificationError as exc:
            why = b"timestamp outside tolerance" if "timestamp" in str(exc) else \
                b"invalid signature"
            return 401, {}, why
        self.messages[msg_id] = payload
        self.received[msg_id] += 1
        self.deliveries += 1
        return 204, {}, b""


# ---------------------------------------------------------------------------------------------
# Syslog


@dataclass(frozen=True)
class SyslogMessage:
    pri: int
    version: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    structured_data: str
    msg: str

    @property
    def facility(self) -> int:
        return self.pri // 8

    @property
    def severity(self) -> int:
        return self.pri % 8


_RFC5424 = re.compile(r"<(\d{1,3})>(\d{1,2}) (\S+) (\S+) (\S+) (\S+) (\S+) "
                      r"(-|(?:\[(?:[^\]\\]|\\.)*\])+)(?: (.*))?\Z", re.DOTALL)


def parse_rfc5424(frame: bytes) -> SyslogMessage:
    m = _RFC5424.match(frame.decode("utf-8"))
    if not m:
        raise ValueError(f"not RFC 5424: {frame[:80]!r}")
    pri, version, *rest, msg = m.groups()
    return SyslogMessage(int(pri), int(version), *rest, msg=(msg or "").removeprefix("\ufeff"))


class SyslogServer:
    """A TCP (or TLS, RFC 5425) syslog receiver parsing octet-counted RFC 5424 frames
    (RFC 6587). ``drop_after(n)`` closes the current connections after ``n`` more frames;
    ``dropped`` is set once such a connection is closed."""

    def __init__(self, tls: LocalCA | None = None) -> None:
        self._tls = tls.server_context() if tls else None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.messages: list[SyslogMessage] = []
        self.errors: list[str] = []  # framing/parse/TLS errors seen
        self.connections = 0
        self._drop_in: int | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self.dropped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def drop_after(self, n: int) -> None:
        with self._lock:
            self._drop_in = n

    def wait_for(self, n: int, timeout: float = 5.0) -> list[SyslogMessage]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.messages)

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.errors.append(f"tls: {exc}")
            conn.close()
            return
        with self._lock:
            self.connections += 1
            self._conns.append(conn)
        buf = b""
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while True:
                    space = buf.find(b" ")
                    if space < 0:
                        break
                    if not buf[:space].isdigit():
                        self.errors.append(f"bad frame length {buf[:space][:20]!r}")
                        return
                    length = int(buf[:space])
                    if len(buf) < space + 1 + length:
                        break
                    frame, buf = buf[space + 1:space + 1 + length], buf[space + 1 + length:]
                    try:
                        self.messages.append(parse_rfc5424(frame))
                    except ValueError as exc:
                        self.errors.append(str(exc))
                    if self._count_down():
                        conn.close()
                        self.dropped.set()
                        return
        except OSError:
            return
        finally:
            conn.close()

    def _count_down(self) -> bool:
        with self._lock:
            if self._drop_in is None:
                return False
            self._drop_in -= 1
            if self._drop_in > 0:
                return False
            self._drop_in = None
            return True

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for conn in self._conns:
                try:
                    conn.close()
                except OSError:
                    pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
