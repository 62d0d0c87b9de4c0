"""STAND-IN for MockServer, used only in IMAGES=local mode (tests/images/compose.local.yml).

This is NOT MockServer. MockServer (a Java jar on Maven Central) cannot be installed on machines
without an image registry, so this small stdlib server serves the same expectations file
(MOCKSERVER_INITIALIZATION_JSON_PATH, mockserver/expectations.json) on 0.0.0.0:1080 with the subset
of MockServer's behaviour the project uses:

- an expectation matches on httpRequest.method and httpRequest.path (exact; a missing method
  matches any method), first match wins;
- it answers httpResponse.statusCode (default 200), headers (MockServer format: name -> list of
  values) and body: a string, {"type": "JSON", "json": ...} (JSON-encoded), or
  {"type": "STRING", "string": ...};
- no match: 404 with an empty body, like MockServer;
- PUT /mockserver/status: 200 with {"ports": [1080]}, like MockServer.

`python3 mockserver_standin.py --probe` exits 0 iff the server answers PUT /mockserver/status on
127.0.0.1 (the container's healthcheck).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar

PORT = int(os.environ.get("MOCKSERVER_SERVER_PORT", "1080"))
STATUS_PATH = "/mockserver/status"


@dataclass(frozen=True)
class Expectation:
    """One MockServer expectation, reduced to what the stand-in supports."""

    method: str | None
    path: str
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method.upper() == method.upper()) and self.path == path


def _body_bytes(body: Any) -> tuple[bytes, str | None]:
    """Encode a MockServer response body; returns (bytes, default content type or None)."""
    if body is None:
        return b"", None
    if isinstance(body, str):
        return body.encode("utf-8"), None
    if isinstance(body, dict):
        kind = str(body.get("type", "")).upper()
        if kind == "JSON":
            payload = body.get("json")
            # MockServer accepts the JSON either as a JSON value or as a string holding JSON.
            text = payload if isinstance(payload, str) else json.dumps(payload)
            return text.encode("utf-8"), "application/json"
        if kind == "STRING":
            return str(body.get("string", "")).encode("utf-8"), "text/plain; charset=utf-8"
        raise ValueError(f"unsupported body type in stand-in: {kind or body!r}")
    # A bare JSON value (object without "type" is handled above as an error; lists, numbers).
    return json.dumps(body).encode("utf-8"), "application/json"


def parse_expectation(raw: Any) -> Expectation:
    """Turn one expectation of the JSON file into an Expectation; fails loudly on the rest."""
    if not isinstance(raw, dict):
        raise ValueError(f"expectation is not an object: {raw!r}")
    request = raw.get("httpRequest") or {}
    response = raw.get("httpResponse") or {}
    if not isinstance(request, dict) or not isinstance(response, dict):
        raise ValueError(f"httpRequest/httpResponse must be objects: {raw!r}")
    path = request.get("path")
    if not isinstance(path, str):
        raise ValueError(f"the stand-in needs httpRequest.path as a string: {raw!r}")
    method = request.get("method")
    if method is not None and not isinstance(method, str):
        raise ValueError(f"httpRequest.method must be a string: {raw!r}")
    body, content_type = _body_bytes(response.get("body"))
    headers: list[tuple[str, str]] = []
    raw_headers = response.get("headers") or {}
    if not isinstance(raw_headers, dict):
        raise ValueError(f"httpResponse.headers must map names to lists of values: {raw!r}")
    for name, values in raw_headers.items():
        for value in values if isinstance(values, list) else [values]:
            headers.append((str(name), str(value)))
    if content_type and not any(name.lower() == "content-type" for name, _ in headers):
        headers.append(("Content-Type", content_type))
    return Expectation(
        method=method,
        path=path,
        status=int(response.get("statusCode", 200)),
        headers=headers,
        body=body,
    )


def load_expectations(path: Path) -> list[Expectation]:
    """Load a MockServer initialization JSON file (a list of expectations, or a single one)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    items = data if isinstance(data, list) else [data]
    return [parse_expectation(item) for item in items]


class StandinHandler(BaseHTTPRequestHandler):
    """Answers from the server's expectations; see the module docstring."""

    server_version = "mockserver-standin"
    expectations: ClassVar[list[Expectation]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)  # drain the request body; matching ignores it
        path = self.path.split("?", 1)[0]
        if self.command == "PUT" and path == STATUS_PATH:
            status = json.dumps({"ports": [PORT]}).encode()
            self._send(200, [("Content-Type", "application/json")], status)
            return
        for expectation in self.expectations:
            if expectation.matches(self.command, path):
                self._send(expectation.status, expectation.headers, expectation.body)
                return
        self._send(404, [], b"")

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"mockserver-standin: {self.address_string()} {format % args}\n")


def probe(port: int) -> int:
    """Healthcheck: 0 iff PUT /mockserver/status answers 200 on 127.0.0.1."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
        conn.request("PUT", STATUS_PATH, body=b"")
        status = conn.getresponse().status
        conn.close()
    except OSError as exc:
        print(f"mockserver-standin probe: {exc}", file=sys.stderr)
        return 1
    return 0 if status == 200 else 1


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="STAND-IN for MockServer (IMAGES=local mode only)")
    parser.add_argument("--probe", action="store_true", help="check the server answers, exit")
    args = parser.parse_args(argv)
    if args.probe:
        return probe(PORT)
    expectations_path = os.environ.get("MOCKSERVER_INITIALIZATION_JSON_PATH", "")
    expectations = load_expectations(Path(expectations_path)) if expectations_path else []
    StandinHandler.expectations = expectations
    # 0.0.0.0: the other containers of the compose network are the clients.
    server = ThreadingHTTPServer(("0.0.0.0", PORT), StandinHandler)
    # PID 1 ignores SIGTERM unless it handles it: stop cleanly on `docker stop`.
    signal.signal(signal.SIGTERM, _stop)
    print(
        f"mockserver-standin: STAND-IN for MockServer, {len(expectations)} expectation(s) "
        f"from {expectations_path or '(none)'}, listening on 0.0.0.0:{PORT}",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
