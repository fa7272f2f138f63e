"""Real servers for the remote tests, on 127.0.0.1 only: an HTTP server with byte ranges that counts what it
sends (the ground truth the `--stats` numbers are compared with), moto's S3 API server, a GCS emulator and
Azurite (Azure Blob Storage)."""

from __future__ import annotations

import itertools
import os
import re
import socket
import subprocess
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

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


class GcsEmulator:
    """gcp-storage-emulator in this process, in memory, on 127.0.0.1; `sent` counts the object bytes it sends,
    per `bucket/key`, as the server answers (its download handler is the one place media leaves it)."""

    def __init__(self) -> None:
        from gcp_storage_emulator import server as emulator

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.sent: Counter[str] = Counter()
        self._response = emulator.Response
        self._write_file = emulator.Response.write_file
        sent, write_file = self.sent, self._write_file

        def counted(response, content, *args, **kwargs):
            where = re.search(r"/b/([^/]+)/o/([^?]+)", response._handler.path)
            if where:
                sent[f"{where.group(1)}/{unquote(where.group(2))}"] += len(content)
            return write_file(response, content, *args, **kwargs)

        emulator.Response.write_file = counted
        self._handlers = emulator.HANDLERS
        emulator.HANDLERS = (*_move_routes(), *emulator.HANDLERS)
        self._server = emulator.create_server("127.0.0.1", self.port, in_memory=True)
        self._server.start()

    def env(self) -> dict[str, str]:
        # gcsfs's default class asks the storage control API (gRPC over TLS) for a bucket's layout, which the
        # emulator does not serve: a minute's timeout per bucket. The plain class reads objects as before.
        return {"STORAGE_EMULATOR_HOST": self.url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

    def filesystem(self):
        """gcsfs's plain filesystem on the emulator, to put fixtures in and look at what the CLI wrote."""
        from gcsfs.core import GCSFileSystem

        return GCSFileSystem(endpoint_url=self.url, token="anon", skip_instance_cache=True)

    def put(self, local: Path, remote: str) -> None:
        """Upload a directory's files under `bucket/prefix/`."""
        with warnings.catch_warnings():  # gcsfs uploads a small file's bytes whole; aiohttp warns past 1 MiB
            warnings.filterwarnings("ignore", "Sending a large body directly", ResourceWarning)
            self.filesystem().put(f"{local}/", remote, recursive=True)

    def close(self) -> None:
        from gcp_storage_emulator import server as emulator

        self._server.stop()
        self._response.write_file = self._write_file
        emulator.HANDLERS = self._handlers


def _move_routes() -> tuple:
    """objects.move (`POST .../o/SRC/moveTo/o/DST`), which gcsfs's mv calls and the emulator lacks: answered
    501, gcsfs retried each rename for ~30 s before falling back to copy and delete, what GCS's move does here."""
    from gcp_storage_emulator import settings
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    def move(request, response, storage, *args, **kwargs):
        bucket, source = request.params["bucket_name"], request.params["object_id"]
        try:
            moved = objects._copy(request.base_url, storage, bucket, source, bucket, request.params["dest_object_id"])
        except NotFound:
            response.status = HTTPStatus.NOT_FOUND
            return
        objects._delete(storage, bucket, source)
        response.json(moved)

    pattern = r"^{}/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)/moveTo/o/(?P<dest_object_id>.*[^/]+)$"
    return tuple((pattern.format(prefix), {"POST": move}) for prefix in (settings.API_ENDPOINT, ""))


# Azurite's well-known development account (published in its documentation; it guards nothing).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_START_TIMEOUT = 30.0
# In memory, quiet, and no telemetry: Azurite otherwise reports to a host on the internet.
AZURITE_OPTIONS = ("--inMemoryPersistence", "--disableTelemetry", "--silent", "--skipApiVersionCheck", "--loose")


class Azurite:
    """Azurite's blob service (a Node program: `npm install -g azurite`) in memory on 127.0.0.1, telemetry
    off; adlfs reaches it through AZURE_STORAGE_CONNECTION_STRING."""

    def __init__(self, executable: str) -> None:
        self.port = free_port()
        self._process = subprocess.Popen(
            [executable, *AZURITE_OPTIONS, "--blobHost", "127.0.0.1", "--blobPort", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + AZURITE_START_TIMEOUT
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"Azurite did not start on 127.0.0.1:{self.port}")
            time.sleep(0.1)
        self.connection_string = (
            f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/devstoreaccount1;"
        )

    def env(self) -> dict[str, str]:
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string}

    def filesystem(self):
        from adlfs import AzureBlobFileSystem

        return AzureBlobFileSystem(connection_string=self.connection_string, skip_instance_cache=True)

    def close(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
