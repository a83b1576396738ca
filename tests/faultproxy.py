"""A fault-injecting HTTP proxy in front of the real Cinder.

Faults a real service cannot be made to produce on demand, injected at
the HTTP boundary (never inside cinderbak): an answer lost after Cinder
carried the request out, an API that stops answering for a while. Every
request is forwarded to the real API; a rule decides what the client
gets back.
"""

from __future__ import annotations

import dataclasses
import http.client
import http.server
import re
import socket
import socketserver
import threading
import time
import urllib.parse

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
}


@dataclasses.dataclass
class Rule:
    """``times`` requests matching ``method`` and ``path`` (a regex) get
    ``action``: ``drop_after`` (forwarded, the answer never sent),
    ``garble`` (forwarded, an HTML page with status 200 sent instead of
    the answer), ``refuse`` (connection closed before forwarding) or
    ``delay`` (held ``seconds`` before forwarding: a slow API)."""

    method: str
    path: str
    action: str
    times: int = 1
    hits: int = 0
    seconds: float = 0.0


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream_host = parsed.hostname or "127.0.0.1"
        self.upstream_port = parsed.port or 80
        self.rules: list[Rule] = []
        self.log: list[tuple[str, str, str]] = []
        self.unreachable_until = 0.0
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                proxy.handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle
            do_HEAD = _handle

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, daemon=True
        )

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(
        self,
        method: str,
        path: str,
        action: str,
        times: int = 1,
        seconds: float = 0.0,
    ) -> Rule:
        rule = Rule(method, path, action, times, seconds=seconds)
        with self._lock:
            self.rules.append(rule)
        return rule

    def _match(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if (
                    rule.hits < rule.times
                    and rule.method == method
                    and re.search(rule.path, path)
                ):
                    rule.hits += 1
                    return rule
        return None

    def handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        method, path = request.command, request.path
        if time.monotonic() < self.unreachable_until:
            self.log.append((method, path, "unreachable"))
            _close(request)
            return
        rule = self._match(method, path)
        if rule is not None and rule.action == "refuse":
            self.log.append((method, path, "refused"))
            _close(request)
            return
        if rule is not None and rule.action == "delay":
            self.log.append((method, path, f"delayed {rule.seconds:g}s"))
            time.sleep(rule.seconds)
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in HOP_BY_HOP and k.lower() != "host"
        }
        upstream = http.client.HTTPConnection(
            self.upstream_host, self.upstream_port, timeout=120
        )
        try:
            upstream.request(method, path, body=body or None, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        finally:
            upstream.close()
        if rule is not None and rule.action == "drop_after":
            self.log.append((method, path, f"dropped {response.status}"))
            _close(request)
            return
        if rule is not None and rule.action == "garble":
            # What a load balancer or proxy in between may serve: its own
            # page, with status 200, instead of the API's answer.
            self.log.append((method, path, f"garbled {response.status}"))
            page = b"<html><body>502 Bad Gateway</body></html>"
            request.send_response(200)
            request.send_header("Content-Type", "text/html")
            request.send_header("Content-Length", str(len(page)))
            request.end_headers()
            request.wfile.write(page)
            return
        self.log.append((method, path, str(response.status)))
        request.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() in HOP_BY_HOP or key.lower() == "content-length":
                continue
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)


def _close(request: http.server.BaseHTTPRequestHandler) -> None:
    """Drop the connection without an answer."""
    request.close_connection = True
    try:
        request.connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
