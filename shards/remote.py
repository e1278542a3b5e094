"""Opening shards and manifests that live anywhere: a local path, http(s), s3, gs, or a ``pipe:`` command.

Every read goes through WebDataset's ``gopen`` and its scheme table ``gopen_schemes``:
http/https run ``curl`` as an argument list (no shell, so ``&`` and spaces in a URL
are data, not syntax) with WebDataset's connect timeout and retries of transient
HTTP errors; gs runs ``gsutil cat``. Three additions, all registered in that same table:

- ``s3``: WebDataset has no s3 handler; ours runs ``aws s3 cp URL -`` through
  WebDataset's own ``Pipe`` class, the way its gs handler runs gsutil.
- http/https without ``curl`` on the PATH: a pure-Python (urllib) handler stands in,
  so a machine without curl still reads shards (a warning says so).
- A stall guard around every stream that is a WebDataset ``Pipe``: curl has no read
  timeout in WebDataset's arguments, so a server that accepts and then sends nothing
  would hang a worker forever. When no byte arrives for ``STALL_SECONDS`` the download
  command is killed and the read fails with an OSError naming the URL, which the
  training stream's retry rule (shards/dataset.py) then handles.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from urllib.parse import quote

# The module, not the function that webdataset's package namespace also calls ``gopen``.
wds_gopen = importlib.import_module("webdataset.gopen")

log = logging.getLogger(__name__)

STALL_SECONDS = float(os.environ.get("FLOAT_SHARD_STALL_SECONDS", 120))
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Characters a URL may carry as they are; anything else (a space, a non-ASCII letter) is %-quoted.
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~-._"


def is_url(text: str) -> bool:
    """scheme://... or pipe:... (a Windows drive letter is not a scheme: it has no //)."""
    return bool(_URL_RE.match(text)) or text.startswith("pipe:")


def quote_url(url: str) -> str:
    """The URL with spaces and other unsafe characters %-quoted; %XX already there is kept."""
    return url if url.startswith("pipe:") else quote(url, safe=_URL_SAFE)


def join_location(root: str, name: str) -> str:
    """``name`` inside a shard folder that is a local path or a URL (a URL's name is %-quoted)."""
    if is_url(root):
        return root.rstrip("/") + "/" + quote(name, safe="")
    return os.path.join(root, name)


def parent_location(location: str) -> str:
    """The folder holding a file or a pattern (``.../shards/train-{0..3}.tar`` -> ``.../shards``)."""
    head = location.split("{", 1)[0]
    if "/" not in head:
        return "."
    return head.rsplit("/", 1)[0] or "/"


# ---------------------------------------------------------------- opening
class _Guarded:
    """A WebDataset ``Pipe`` whose command is killed when no byte arrives for ``stall`` seconds."""

    def __init__(self, pipe, url: str, stall: float):
        self.pipe, self.url, self.stall = pipe, url, stall
        self.last = time.monotonic()
        self.stalled = self.reported = False
        self.done = threading.Event()
        wds_gopen.set_options(pipe, timeout=stall)  # closing early waits for the command at most this long
        threading.Thread(target=self._watch, daemon=True, name="shard-stall-guard").start()

    def _watch(self) -> None:
        while not self.done.wait(min(1.0, self.stall / 4)):
            if time.monotonic() - self.last > self.stall:
                self.stalled = True
                self.pipe.proc.kill()
                return

    def _error(self, e: BaseException | None) -> OSError:
        self.reported = True
        if self.stalled:
            return OSError(f"{self.url}: no data for {self.stall:g} s (stalled transfer; download stopped)")
        return OSError(f"{self.url}: read failed ({_short(e)})")

    def read(self, *args) -> bytes:
        try:
            data = self.pipe.read(*args)
        except OSError as e:
            raise self._error(e) from None
        if self.stalled:
            raise self._error(None)
        self.last = time.monotonic()
        return data

    def close(self) -> None:
        self.done.set()
        try:
            self.pipe.close()
        except subprocess.TimeoutExpired:  # closed early and the command does not end: stop it
            self.pipe.proc.kill()
            self.pipe.proc.wait()
        except OSError as e:
            if not self.reported:  # a read already raised this failure
                raise self._error(e) from None

    @property
    def closed(self) -> bool:
        return self.pipe.stream.closed


def _short(e: BaseException | None) -> str:
    """WebDataset's pipe errors print the whole argv and kwargs; keep the exit status."""
    text = str(e)
    m = re.search(r"exit (-?\d+)", text)
    if m:
        status = int(m.group(1))
        return f"download command exit status {status}" + _CURL_STATUS.get(status, "")
    return text


_CURL_STATUS = {6: " (host not found)", 7: " (connection refused)", 18: " (transfer cut short)",
                22: " (HTTP error, e.g. 404)", 28: " (timed out)", 56: " (connection reset)",
                -9: " (killed)"}


def open_location(location: str, stall: float | None = None):
    """A binary read stream of a local path or a URL, through WebDataset's gopen (see the module docstring)."""
    register_handlers()
    url = quote_url(location) if is_url(location) else location
    stream = wds_gopen.gopen(url, "rb")
    if isinstance(stream, wds_gopen.Pipe):
        return _Guarded(stream, location, STALL_SECONDS if stall is None else stall)
    return stream


def read_location(location: str, retries: int = 2, delay: float = 1.0) -> bytes:
    """The whole content of a (small) file or URL, retried ``retries`` times on an I/O error."""
    for attempt in range(retries + 1):
        stream = None
        try:
            stream = open_location(location)
            data = stream.read()
            stream.close()
            return data
        except OSError as e:
            if stream is not None:
                _close_quietly(stream)
            if attempt == retries or isinstance(e, FileNotFoundError):
                raise OSError(f"{location}: cannot be read ({e})") from None
            log.warning("%s: read error (%s); retry %d of %d", location, e, attempt + 1, retries)
            time.sleep(delay * (attempt + 1))
    raise AssertionError("unreachable")


def read_json_location(location: str) -> object:
    data = read_location(location)
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{location}: not readable JSON ({e})") from None


def _close_quietly(stream) -> None:
    try:
        stream.close()
    except Exception:
        pass


# ---------------------------------------------------------------- extra scheme handlers
def gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192):
    """s3://bucket/key through the AWS CLI, run as WebDataset runs gsutil (argument list, its Pipe)."""
    if mode[0] != "r":
        raise ValueError(f"{url}: s3 shards are read only here")
    return wds_gopen.Pipe(["aws", "s3", "cp", "--only-show-errors", url, "-"], mode=mode, bufsize=bufsize,
                          ignore_status=[141, 23])


class _UrllibStream:
    """An http(s) response as a stream whose errors are OSErrors naming the URL."""

    def __init__(self, url: str, timeout: float):
        self.url = url
        try:
            self.response = urllib.request.urlopen(url, timeout=timeout)
        except (urllib.error.URLError, HTTPException, OSError) as e:
            raise OSError(f"{url}: {e}") from None

        length = self.response.headers.get("Content-Length")
        self.expected, self.got = (int(length) if length and length.isdigit() else None), 0

    def read(self, *args) -> bytes:
        try:
            data = self.response.read(*args)
        except (HTTPException, OSError) as e:  # IncompleteRead (cut short) is an HTTPException
            raise OSError(f"{self.url}: read failed ({e!r})") from None
        self.got += len(data)
        # read(n) returns b"" at a dropped connection instead of raising: compare with Content-Length.
        if not data and (not args or args[0]) and self.expected is not None and self.got < self.expected:
            raise OSError(f"{self.url}: transfer cut short ({self.got} of {self.expected} bytes)")
        return data

    def close(self) -> None:
        self.response.close()


def gopen_urllib(url: str, mode: str = "rb", bufsize: int = 8192):
    """http(s) in pure Python: the fallback when curl is missing (socket timeout = the stall guard)."""
    if mode[0] != "r":
        raise ValueError(f"{url}: only reading is supported without curl")
    return _UrllibStream(url, STALL_SECONDS)


_registered = False


def register_handlers() -> None:
    """Add s3 (and http/https without curl) to WebDataset's scheme table, once; a user's own stays."""
    global _registered
    if _registered:
        return
    _registered = True
    wds_gopen.gopen_schemes.setdefault("s3", gopen_s3)
    if shutil.which("curl") is None:
        for scheme in ("http", "https"):
            if wds_gopen.gopen_schemes.get(scheme) is wds_gopen.gopen_curl:
                wds_gopen.gopen_schemes[scheme] = gopen_urllib
        log.warning("curl is not installed: http(s) shards are read with Python's urllib instead")
