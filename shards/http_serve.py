"""A folder served over HTTP on 127.0.0.1, for tests and the remote-loader benchmark.

``serve_folder`` starts Python's http.server in a thread on a free port and stops it
when the ``with`` block ends, or by itself after ``lifetime`` seconds whatever
happens (a test that dies does not leave a server behind). ``cut`` names files
that are sent cut short: the full Content-Length is announced, half the bytes are
sent, then the connection closes, as a dropped transfer looks to a client.
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import os
import threading
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlparse


class _Handler(http.server.SimpleHTTPRequestHandler):
    cut: frozenset[str] = frozenset()
    requests: list[str]

    def do_GET(self) -> None:
        name = unquote(urlparse(self.path).path).lstrip("/")
        self.requests.append(name)
        if name in self.cut:
            path = Path(self.directory) / name
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args) -> None:  # quiet: tests read self.requests instead
        pass


class ServedFolder:
    def __init__(self, url: str, requests: list[str]):
        self.url, self.requests = url, requests


@contextlib.contextmanager
def serve_folder(folder: str | Path, cut: set[str] | frozenset[str] = frozenset(),
                 lifetime: float = 600.0) -> Iterator[ServedFolder]:
    """Serve ``folder`` at http://127.0.0.1:PORT (yielded as ``.url``; ``.requests`` lists the paths asked for)."""
    requests: list[str] = []
    handler = functools.partial(type("Handler", (_Handler,), {"cut": frozenset(cut), "requests": requests}),
                                directory=os.fspath(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    timer = threading.Timer(lifetime, server.shutdown)  # the bound: never outlives ``lifetime``
    timer.daemon = True
    timer.start()
    try:
        yield ServedFolder(f"http://127.0.0.1:{server.server_address[1]}", requests)
    finally:
        timer.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
