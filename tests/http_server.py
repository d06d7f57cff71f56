"""A real HTTP file server on 127.0.0.1 for download tests, with Range support and scripted faults.

``with FileServer() as server:`` (or a fixture yielding one), put bytes in
``server.files``, and point a download at ``server.url(name)``. Faults, set before the request:

- ``drop_after`` / ``drops``: the next ``drops`` responses send only
  ``drop_after`` body bytes, then close the socket (a dropped connection);
- ``stall``: responses send their headers, then nothing until the server stops;
- ``ignore_range``: answer Range requests with the whole file (200);
- ``hold``: a cleared ``threading.Event``: responses send their headers, then wait until it is set
  before the body (a download that is under way until the test lets it finish).

``server.requests`` records ``(path, Range header or None)`` per request.
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FileServer:
    """Serves ``files`` (name -> bytes) over HTTP on an ephemeral 127.0.0.1 port."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.drop_after: int | None = None
        self.drops = 1
        self.stall = False
        self.ignore_range = False
        self.hold = threading.Event()
        self.hold.set()
        self._released = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, name: str) -> str:
        host, port = self._httpd.server_address[:2]
        assert isinstance(host, str)  # an AF_INET server's address
        return f"http://{host}:{port}/{name}"

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._released.set()  # let stalled handlers finish
        self.hold.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # http.server's naming
        server: FileServer = self.server.owner  # type: ignore[attr-defined]
        name = self.path.split("?", 1)[0].lstrip("/")
        range_header = self.headers.get("Range")
        server.requests.append((name, range_header))
        body = server.files.get(name)
        if body is None:
            self.send_error(404, "Not Found")
            return
        status, start, end = 200, 0, len(body)
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header or "")
        if match and not server.ignore_range:
            start = int(match.group(1))
            end = min(int(match.group(2)) + 1, len(body)) if match.group(2) else len(body)
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        chunk = body[start:end]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(chunk)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(body)}")
        self.end_headers()
        if server.stall:
            server._released.wait(timeout=60)
            return
        server.hold.wait(timeout=60)
        if server.drop_after is not None and server.drops > 0:
            server.drops -= 1
            self.wfile.write(chunk[: server.drop_after])
            self.wfile.flush()
            self.close_connection = True  # the socket closes with the body unfinished
            return
        self.wfile.write(chunk)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean
