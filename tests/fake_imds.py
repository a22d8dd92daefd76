"""A small fake EC2 instance metadata service (IMDSv2) for the tests, on 127.0.0.1 and a free port.

    with FakeImds() as imds:                      # http.server in a thread
        env["SPOTSWEEP_METADATA_URL"] = imds.url
        ...
        imds.arm_spot_notice()                    # spot/instance-action: 404 -> 200 {"action": "terminate", ...}

Like the real service it requires a token: `PUT /latest/api/token` (with the TTL header) returns
one, and every metadata GET without a valid `X-aws-ec2-metadata-token` gets 401.

A misbehaving service on request: `imds.break_metadata("garbage")` answers every metadata GET
with a line that is not HTTP, `"truncated"` with a body shorter than its Content-Length,
`imds.heal()` restores it; `arm_raw_notice(body)` answers the notice with any body.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN_PATH = "/latest/api/token"
META_PREFIX = "/latest/meta-data/"


class FakeImds:
    def __init__(self, instance_id: str = "i-0123456789abcdef0", instance_type: str = "g4dn.xlarge",
                 availability_zone: str = "us-east-1a") -> None:
        self.tokens: set[str] = set()
        self.requests: Counter[str] = Counter()  # path -> GETs/PUTs served (any status)
        self._lock = threading.Lock()
        self._paths: dict[str, str] = {
            "instance-id": instance_id,
            "instance-type": instance_type,
            "placement/availability-zone": availability_zone,
        }
        self.notice_armed_at: float | None = None
        self.broken: str | None = None  # None | "garbage" | "truncated"
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-imds", daemon=True)

    # --- lifecycle ---

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeImds:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeImds:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what the test controls ---

    def arm_spot_notice(self, action: str = "terminate", in_s: float = 120.0) -> None:
        """From now on `spot/instance-action` answers 200 with the notice (two minutes ahead by default)."""
        when = datetime.now(timezone.utc) + timedelta(seconds=in_s)
        body = json.dumps({"action": action, "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")})
        with self._lock:
            self._paths["spot/instance-action"] = body
            self.notice_armed_at = time.time()

    def arm_rebalance(self) -> None:
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self._lock:
            self._paths["events/recommendations/rebalance"] = json.dumps({"noticeTime": now})

    def arm_raw_notice(self, body: str) -> None:
        """`spot/instance-action` answers 200 with exactly `body` (e.g. JSON that is not an object)."""
        with self._lock:
            self._paths["spot/instance-action"] = body
            self.notice_armed_at = time.time()

    def break_metadata(self, mode: str) -> None:
        if mode not in ("garbage", "truncated"):
            raise ValueError(f"unknown failure mode {mode!r}")
        self.broken = mode

    def heal(self) -> None:
        self.broken = None

    def disarm(self) -> None:
        with self._lock:
            self._paths.pop("spot/instance-action", None)
            self._paths.pop("events/recommendations/rebalance", None)
            self.notice_armed_at = None

    def polls(self, path: str) -> int:
        return self.requests[META_PREFIX + path]

    def _lookup(self, path: str) -> str | None:
        with self._lock:
            return self._paths.get(path)


def _handler_for(imds: FakeImds) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _send(self, code: int, body: str = "", content_type: str = "text/plain") -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:  # noqa: N802
            imds.requests[self.path] += 1
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            if self.path != TOKEN_PATH:
                self._send(404, "Not Found")
                return
            if not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                self._send(400, "Missing TTL header")
                return
            token = uuid.uuid4().hex
            imds.tokens.add(token)
            self._send(200, token)

        def _misbehave(self, mode: str) -> None:
            self.close_connection = True
            if mode == "garbage":
                self.wfile.write(b"NOT HTTP AT ALL\r\n\r\n")
                return
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"{\"act")

        def do_GET(self) -> None:  # noqa: N802
            imds.requests[self.path] += 1
            if imds.broken is not None:
                self._misbehave(imds.broken)
                return
            if not self.path.startswith(META_PREFIX):
                self._send(404, "Not Found")
                return
            if self.headers.get("X-aws-ec2-metadata-token") not in imds.tokens:
                self._send(401, "Unauthorized")
                return
            value = imds._lookup(self.path[len(META_PREFIX):])
            if value is None:
                self._send(404, "Not Found")
                return
            content_type = "application/json" if value.startswith("{") else "text/plain"
            self._send(200, value, content_type)

    return Handler
