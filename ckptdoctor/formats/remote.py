"""Checkpoints in object stores and behind HTTP, read by byte range through fsspec.

Imported only when a path is a URL (`bytesource.is_url`): listing a local checkpoint never pays for fsspec,
aiohttp or a cloud library. Credentials and endpoints come from each library's own configuration (the
environment, its config files, `AWS_ENDPOINT_URL`, fsspec's config); a URL is shown only without its
userinfo, query and fragment, since those carry tokens (a signed URL, an Azure SAS, basic auth)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from urllib.parse import urljoin, urlsplit, urlunsplit

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.errors import first_line
from ckptdoctor.formats.bytesource import MissingFile
from ckptdoctor.model import CheckpointError

if TYPE_CHECKING:
    from typing import Any

# A small read is extended to this many bytes, so an index's blocks or HDF5's scattered metadata cost one
# request instead of one each; a file no larger than this is fetched whole by its first read. Only a read
# that looks like the start of a run is extended: the first, one that goes on where the last ended, or a
# tiny one (metadata); a scan that jumps between tensors fetches exactly what it reads.
READ_AHEAD = 256 << 10
TINY_READ = 4 << 10
MAX_CACHED_BYTES = 32 << 20  # fetched windows kept for re-reads, least recently used dropped first
COALESCE_GAP = 4 << 10  # missing ranges closer than this are fetched as one request
# A read this small (a bias, a BatchNorm statistic) is also kept exactly as read: `check` reads such tensors
# again after its scan (the rules' values), when the scan's windows of a large checkpoint are long gone.
KEPT_READ = 64 << 10
MAX_KEPT_BYTES = 16 << 20  # reads kept, least recently used dropped first
HTTP_PROTOCOLS = frozenset({"http", "https"})
# The library a protocol needs and the extra that installs it (fsspec itself is a dependency).
LIBRARIES = {
    "s3": ("s3fs", "s3"),
    "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
    "az": ("adlfs", "azure"),
    "abfs": ("adlfs", "azure"),
    "abfss": ("adlfs", "azure"),
    "http": ("aiohttp", "http"),
    "https": ("aiohttp", "http"),
}


class ReadStats:
    """What reading one remote file cost: requests (metadata included) and bytes fetched."""

    __slots__ = ("fetched", "requests", "size")

    def __init__(self) -> None:
        self.requests = 0
        self.fetched = 0
        self.size: int | None = None


# By shown URL, in the order first used; the CLI's `--stats` prints it.
STATS: dict[str, ReadStats] = {}
# Userinfo and query the user gave for an origin (scheme, host): applied to every file read there (a
# bundle's index and shards share the token that opened its prefix), never shown.
_SECRETS: dict[tuple[str, str], tuple[str, str]] = {}


def stats_lines() -> list[str]:
    """`--stats`: each remote file's requests and bytes fetched, then the total."""
    lines = []
    for url, stats in STATS.items():
        of = f" of {stats.size:,}" if stats.size is not None else ""
        lines.append(f"{url}: {stats.requests} requests, {stats.fetched:,} bytes fetched{of}")
    if lines:
        requests, fetched = sum(s.requests for s in STATS.values()), sum(s.fetched for s in STATS.values())
        lines.append(f"remote reads in all: {requests} requests, {fetched:,} bytes fetched")
    return lines


def protocol_of(url: str) -> str:
    return url.split("://", 1)[0].lower()


def shown_url(url: str) -> str:
    """The URL without userinfo, query or fragment: what messages and reports may print."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def remember_secrets(url: str) -> str:
    """Keep the URL's userinfo and query for its origin; returns the URL as shown (the checkpoint's name)."""
    parts = urlsplit(url)
    userinfo, _, host = parts.netloc.rpartition("@")
    if userinfo or parts.query:
        _SECRETS[(parts.scheme.lower(), host.lower())] = (userinfo, parts.query)
    return shown_url(url)


def _with_secrets(url: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    userinfo, query = _SECRETS.get((parts.scheme.lower(), host.lower()), ("", ""))
    if not userinfo and not query:
        return url
    netloc = f"{userinfo}@{host}" if userinfo else host
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def hide_secrets(text: str) -> str:
    """Library messages often quote the URL they failed on: drop anything the user's URLs carried secretly."""
    for userinfo, query in _SECRETS.values():
        for secret in (userinfo, query):
            if secret:
                text = text.replace(secret, "…")
    return text


class CrossHostRedirect(CheckpointError):
    pass


def _redirect_guard():
    """An aiohttp trace hook refusing a redirect to another host: the URL the user named is the one read."""
    import aiohttp

    async def on_redirect(_session, _context, params) -> None:
        origin = urlsplit(str(params.url))
        there = urlsplit(urljoin(str(params.url), params.response.headers.get("Location", "")))
        if (origin.hostname, origin.port) != (there.hostname, there.port):
            raise CrossHostRedirect(
                f"{shown_url(str(params.url))}: the server redirects to another host ({there.hostname}); "
                "give that URL itself to read from there"
            )

    trace = aiohttp.TraceConfig()
    trace.on_request_redirect.append(on_redirect)
    return trace


def _options(protocol: str) -> dict[str, Any]:
    """Options ckptdoctor adds to the user's own fsspec configuration for a protocol."""
    if protocol not in HTTP_PROTOCOLS:
        return {}
    import fsspec.config

    configured = dict(fsspec.config.conf.get(protocol, {}).get("client_kwargs", {}))
    configured["trace_configs"] = [*configured.get("trace_configs", []), _redirect_guard()]
    return {"client_kwargs": configured}


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem for a URL and the path it knows the file by; a missing library is one line."""
    protocol = protocol_of(url)
    try:
        import fsspec.core

        return fsspec.core.url_to_fs(_with_secrets(url), **_options(protocol))
    except ImportError as error:
        package, extra = LIBRARIES.get(protocol, (error.name or "fsspec", None))
        install = f"pip install 'ckptdoctor[{extra}]'" if extra else f"pip install {package}"
        raise CheckpointError(f"{shown_url(url)}: reading {protocol}:// needs {package} ({install})") from None
    except ValueError as error:  # fsspec: "Protocol not known"
        raise CheckpointError(f"{shown_url(url)}: {hide_secrets(first_line(error))}") from None


def _failure(url: str, error: BaseException) -> CheckpointError:
    """A remote error as one line naming the file, never the secrets in its URL."""
    cause: BaseException | None = error
    while cause is not None:  # fsspec turns a refused redirect or an HTTP 403 into "not found": say which
        if isinstance(cause, CheckpointError):
            return cause
        status = getattr(cause, "status", None)
        if isinstance(status, int) and status != 404:
            return CheckpointError(f"{shown_url(url)}: cannot be read (HTTP {status})")
        cause = cause.__cause__ or cause.__context__
    if isinstance(error, FileNotFoundError):
        return MissingFile(f"{shown_url(url)}: file not found")
    if isinstance(error, PermissionError):
        return CheckpointError(f"{shown_url(url)}: access denied (check the store's credentials)")
    detail = hide_secrets(f"{type(error).__name__}: {first_line(error)}")
    return CheckpointError(f"{shown_url(url)}: cannot be read ({detail})")


class Store:
    """One store as ckptdoctor asks it things: does a file exist, is this a directory, what lies in it."""

    def __init__(self, url: str) -> None:
        self.protocol = protocol_of(url)
        self.fs, _ = filesystem(url)
        self.listable = self.protocol not in HTTP_PROTOCOLS  # plain HTTP has no listing to trust
        self._known: dict[str, dict[str, Any] | None] = {}  # answers already had, during one resolution

    def fs_path(self, url: str) -> str:
        return _with_secrets(url) if self.protocol in HTTP_PROTOCOLS else self.fs._strip_protocol(url)

    def url(self, fs_path: str) -> str:
        return fs_path if self.protocol in HTTP_PROTOCOLS else f"{self.protocol}://{fs_path}"

    def _info(self, url: str) -> dict[str, Any] | None:
        if url not in self._known:
            _stats(url).requests += 1
            try:
                self._known[url] = self.fs.info(self.fs_path(url))
            except Exception as error:
                if not isinstance(_failure(url, error), MissingFile):
                    raise _failure(url, error) from None
                self._known[url] = None
        return self._known[url]

    def is_file(self, url: str) -> bool:
        info = self._info(url)
        return info is not None and info.get("type") != "directory"

    def is_directory(self, url: str) -> bool:
        if not self.listable:
            return False
        info = self._info(url)
        return info is not None and info.get("type") == "directory"

    def files(self, directory: str) -> list[str]:
        """The URLs of the files directly in a directory, oldest first (by modification time where the store
        keeps one, then by name); none where it does not exist."""
        _stats(directory).requests += 1
        try:
            entries = self.fs.ls(self.fs_path(directory), detail=True)
        except FileNotFoundError:
            return []
        except Exception as error:
            raise _failure(directory, error) from None
        found = [e for e in entries if e.get("type") == "file"]
        found.sort(key=lambda e: (str(_modified(e)), str(e["name"])))
        return [self.url(str(e["name"])) for e in found]

    def indexes(self, directory: str) -> list[str]:
        """The `.index` files directly in a directory, oldest first."""
        return [url for url in self.files(directory) if url.endswith(".index")]


def _modified(entry: dict[str, Any]) -> object:
    return entry.get("LastModified") or entry.get("mtime") or entry.get("updated") or entry.get("last_modified") or ""


# Fetched windows by object (shown URL, size, version tag), least recently used first; bounded in bytes.
_WINDOWS: OrderedDict[tuple[str, int, str], OrderedDict[int, bytes]] = OrderedDict()
_VERSION_FIELDS = ("ETag", "etag", "LastModified", "Last-Modified", "mtime", "updated", "last_modified")
_cached_bytes = 0
# Small reads by (object, offset, length), least recently used first; bounded in bytes.
_KEPT: OrderedDict[tuple[tuple[str, int, str], int, int], bytes] = OrderedDict()
_kept_bytes = 0
_LOCK = threading.Lock()


def _stats(url: str) -> ReadStats:
    return STATS.setdefault(shown_url(url), ReadStats())


class RemoteFile:
    """A remote file read by byte range: small reads read ahead, windows are kept for re-reads, and a large
    read fetches exactly its own bytes, so a scan front to back fetches every byte once."""

    def __init__(self, url: str) -> None:
        self.name = shown_url(url)
        self._url = url
        self._fs, self._path = filesystem(url)
        self._stats = _stats(url)
        self._stats.requests += 1
        try:
            info = self._fs.info(self._path)
        except Exception as error:
            raise _failure(url, error) from None
        if info.get("type") == "directory":
            raise CheckpointError(f"{self.name}: is a directory, not a file")
        if info.get("size") is None:
            raise CheckpointError(f"{self.name}: the server does not say how large the file is")
        if info.get("partial") is False:
            raise CheckpointError(f"{self.name}: the server refuses byte ranges (Accept-Ranges: none)")
        self._size = int(info["size"])
        self._stats.size = self._size
        # Windows are shared by every opening of the same object as it is now (resolution, sniffing and the
        # reader each open it): the version tag changes when the object does, so nothing stale is read.
        version = next((str(info[k]) for k in _VERSION_FIELDS if info.get(k) is not None), "")
        self._key = (self.name, self._size, version)
        self._last_end: int | None = None  # where this opening's last read ended
        self._windows = _WINDOWS.setdefault(self._key, OrderedDict())

    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        """Exactly `length` bytes at `offset`, or fewer where the file ends first."""
        end = min(offset + max(length, 0), self._size)
        if offset >= end:
            return b""
        with _LOCK:
            kept = _KEPT.get((self._key, offset, end))
            if kept is not None:
                _KEPT.move_to_end((self._key, offset, end))
                return kept
            cached = self._cached_windows(offset, end)
            in_run = self._last_end is None or abs(offset - self._last_end) <= COALESCE_GAP or length <= TINY_READ
            missing = self._missing(offset, end, cached, small=length < READ_AHEAD and in_run)
            self._last_end = end
            fetched = self._fetch(missing)
            for start, data in fetched:
                if len(data) <= READ_AHEAD:
                    self._keep(start, data)
        out, position = [], offset
        for start, data in sorted([*cached, *fetched]):
            if start <= position < start + len(data):
                out.append(data[position - start : end - start])
                position = min(start + len(data), end)
        result = b"".join(out)
        if end - offset <= KEPT_READ:
            self._keep_read(offset, end, result)
        return result

    def _keep_read(self, offset: int, end: int, data: bytes) -> None:
        global _kept_bytes
        with _LOCK:
            if (self._key, offset, end) not in _KEPT:
                _KEPT[(self._key, offset, end)] = data
                _kept_bytes += len(data)
            while _kept_bytes > MAX_KEPT_BYTES:
                _kept_bytes -= len(_KEPT.popitem(last=False)[1])

    def _cached_windows(self, offset: int, end: int) -> list[tuple[int, bytes]]:
        found = []
        for start, data in self._windows.items():
            if start < end and start + len(data) > offset:
                found.append((start, data))
        for start, _ in found:
            self._windows.move_to_end(start)
        return sorted(found)

    def _missing(self, offset: int, end: int, cached: list[tuple[int, bytes]], small: bool) -> list[tuple[int, int]]:
        """The ranges of [offset, end) no window holds, neighbours coalesced; a small read's last gap is
        extended forward by the read-ahead (up to the next window, never past the file's end)."""
        gaps, position = [], offset
        for start, data in cached:
            if start > position:
                gaps.append((position, start))
            position = max(position, start + len(data))
        if position < end:
            gaps.append((position, end))
        if self._size <= READ_AHEAD and gaps:  # a small file is fetched whole by its first read
            return [(0, self._size)] if not self._windows else gaps
        if small and gaps and gaps[-1][1] == end:
            later = [start for start in self._windows if start >= end]
            limit = min([self._size, *later])
            gaps[-1] = (gaps[-1][0], max(end, min(limit, gaps[-1][0] + READ_AHEAD)))
        merged: list[tuple[int, int]] = []
        for start, stop in gaps:
            if merged and start - merged[-1][1] <= COALESCE_GAP:
                merged[-1] = (merged[-1][0], stop)
            else:
                merged.append((start, stop))
        return merged

    def _fetch(self, ranges: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
        if not ranges:
            return []
        self._stats.requests += len(ranges)
        try:
            if len(ranges) == 1:
                blobs = [self._fs.cat_file(self._path, start=ranges[0][0], end=ranges[0][1])]
            else:
                starts, ends = [r[0] for r in ranges], [r[1] for r in ranges]
                blobs = self._fs.cat_ranges([self._path] * len(ranges), starts, ends, on_error="raise")
        except Exception as error:
            raise _failure(self._url, error) from None
        out = []
        for (start, stop), data in zip(ranges, blobs, strict=True):
            self._stats.fetched += len(data)
            if len(data) > stop - start:
                raise CheckpointError(f"{self.name}: the server ignored the byte range asked for (no range support)")
            out.append((start, bytes(data)))
        return out

    def _keep(self, start: int, data: bytes) -> None:
        global _cached_bytes
        self._windows = _WINDOWS.setdefault(self._key, self._windows)  # back in, if it had been dropped
        _WINDOWS.move_to_end(self._key)
        _cached_bytes -= len(self._windows.pop(start, b""))
        self._windows[start] = data
        _cached_bytes += len(data)
        while _cached_bytes > MAX_CACHED_BYTES:  # the oldest windows of the least recently used objects go
            key, oldest = next(iter(_WINDOWS.items()))
            if oldest:
                _cached_bytes -= len(oldest.popitem(last=False)[1])
            if not oldest:
                del _WINDOWS[key]

    def close(self) -> None:
        pass  # nothing is held open: the windows stay for the next opening of the same object

    def __enter__(self) -> RemoteFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
