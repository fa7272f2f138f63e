"""Real servers for the remote tests, on 127.0.0.1 only: an HTTP server with byte ranges that counts what it
sends (the ground truth the `--stats` numbers are compared with), and moto's S3 API server."""

from __future__ import annotations

import itertools
import os
import re
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass
class Served:
    """What the HTTP server sent: requests, body bytes and byte ranges per path, and the raw request lines."""

    requests: Counter[str] = field(default_factory=Counter)
    sent: Counter[str] = field(default_factory=Counter)
    ranges: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def total_requests(self) -> int:
        return sum(self.requests.values())

    def total_sent(self) -> int:
        return sum(self.sent.values())

    def overlapping(self, path: str) -> list[tuple[int, int]]:
        """The byte ranges of `path` sent more than once (empty when every byte went at most once)."""
        spans = sorted(self.ranges.get(path, []))
        return [(b[0], min(a[1], b[1])) for a, b in itertools.pairwise(spans) if b[0] < a[1]]

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.sent.clear()
            self.ranges.clear()
            self.lines.clear()


class HttpServer:
    """Serves `root`; `token` (when set) must come as `?token=`; `redirects` maps a path to a Location;
    `ignore_ranges` answers every GET with the whole file, as a server without range support does."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.served = Served()
        self.token: str | None = None
        self.redirects: dict[str, str] = {}
        self.ignore_ranges = False
        self.no_length = False
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, directory=str(server.root), **kwargs)

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                parts = urlsplit(self.path)
                with server.served.lock:
                    server.served.requests[parts.path] += 1
                    server.served.lines.append(f"{self.command} {self.path} {self.headers.get('Range', '')}")
                if server.token is not None and parse_qs(parts.query).get("token") != [server.token]:
                    self.send_error(403)
                    return
                if parts.path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[parts.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                file = server.root / parts.path.lstrip("/")
                if not file.is_file():
                    self.send_error(404)
                    return
                size = file.stat().st_size
                start, end, status = 0, size, 200
                match = _RANGE.match(self.headers.get("Range", ""))
                if match and not server.ignore_ranges:
                    start = int(match.group(1))
                    end = min(size, int(match.group(2)) + 1) if match.group(2) else size
                    status = 206
                self.send_response(status)
                if not server.no_length:
                    self.send_header("Content-Length", str(end - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if body:
                    with server.served.lock:  # counted before sending: the client may finish before we return
                        server.served.sent[parts.path] += end - start
                        server.served.ranges.setdefault(parts.path, []).append((start, end))
                    with file.open("rb") as opened:  # only the range: a large shard is not read per request
                        opened.seek(start)
                        self.wfile.write(opened.read(end - start))

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


S3_ENV = {  # moto accepts any credentials; these keep the libraries from looking further
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def s3_env(endpoint: str) -> dict[str, str]:
    return {
        **S3_ENV,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
