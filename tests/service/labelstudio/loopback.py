"""A real HTTP server on a loopback address for the fetcher's tests: routes to canned answers, and
a record of what it was asked (path and headers)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False  # no Content-Length: the body streams in chunks


Route = Callable[["Seen"], Answer]


@dataclass
class Seen:
    method: str
    path: str  # with the query
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    base: str  # http://host:port
    host: str
    port: int
    routes: dict[str, Route]
    seen: list[Seen]
    stop: threading.Event  # set at exit: releases handlers that hang on purpose


@contextlib.contextmanager
def serving(host: str = "127.0.0.1") -> Iterator[Server]:
    routes: dict[str, Route] = {}
    seen: list[Seen] = []
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length", 0) or 0)
            request = Seen(
                self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length)
            )
            seen.append(request)
            route = routes.get(self.path) or routes.get(self.path.split("?", 1)[0])
            answer = route(request) if route else Answer(404, b"not found")
            if answer.status == 0:  # hang until the test ends
                stop.wait(60)
                return
            self.send_response(answer.status)
            for key, value in answer.headers.items():
                self.send_header(key, value)
            if answer.chunked:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for start in range(0, len(answer.body), 4096):
                    piece = answer.body[start : start + 4096]
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

        do_GET = _answer
        do_POST = _answer

    httpd = ThreadingHTTPServer((host, 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    port = httpd.server_address[1]
    try:
        yield Server(f"http://{host}:{port}", host, port, routes, seen, stop)
    finally:
        stop.set()
        httpd.shutdown()
        httpd.server_close()
