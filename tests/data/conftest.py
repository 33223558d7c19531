"""A loopback HTTP server for the download tests: static files, and transfers that go wrong on purpose.

Routes (``<path>`` is a file under the served folder):

* ``/<path>``: the file, with its ``Content-Length``;
* ``/cut/<path>``: announces the whole file's length, sends half of it, closes the connection;
* ``/chunked-cut/<path>``: chunked transfer encoding, half of the file, then closes without the last chunk;
* ``/bad-length/<path>``: a malformed ``Content-Length``;
* ``/slow/<path>``: headers, then silence for 3 s (longer than the tests' client timeouts).

Every test bounds its transfers with a client timeout of at most a few seconds; the server runs in a daemon
thread and is shut down at the end of the session.
"""

from __future__ import annotations

import http.server
import os
import threading
import time
from functools import partial
from pathlib import Path

import pytest


class _Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked transfers need it
    requests: list[str]

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def do_GET(self):  # noqa: N802 - the base class's name
        type(self).requests.append(self.path)
        route, _, rest = self.path.lstrip("/").partition("/")
        if route not in ("cut", "chunked-cut", "bad-length", "slow"):
            return super().do_GET()
        path = Path(self.directory) / rest
        if not path.is_file():
            return self.send_error(404)
        data = path.read_bytes()
        self.close_connection = True
        self.send_response(200)
        if route == "chunked-cut":
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", "12abc" if route == "bad-length" else str(len(data)))
        self.end_headers()
        if route == "slow":
            time.sleep(3)
        half = data[: len(data) // 2]
        if route == "chunked-cut":
            for start in range(0, len(half), 4096):
                chunk = half[start : start + 4096]
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        elif route == "cut":
            self.wfile.write(half)
        else:
            self.wfile.write(data)
        self.wfile.flush()


class LoopbackServer:
    """``url`` serves ``root``; ``requests`` lists the paths asked for."""

    def __init__(self, root: Path):
        self.root = root
        handler = type("Handler", (_Handler,), {"requests": []})
        self.requests: list[str] = handler.requests
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def folder(self, name: str) -> tuple[Path, str]:
        """A new served folder and its URL."""
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path, f"{self.url}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="session")
def loopback(tmp_path_factory):
    server = LoopbackServer(tmp_path_factory.mktemp("www"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True)
def _no_mirror_env(monkeypatch):
    monkeypatch.delenv("LIGHTNING_SEG_MIRROR", raising=False)


@pytest.fixture(autouse=True)
def _fresh_checks():
    """Each test starts with no dataset checked in this process (the library remembers verified folders)."""
    from lightning_seg.data.manifest import forget_checks

    forget_checks()
    yield
    forget_checks()


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything under ``root``, hidden files and links included: kind, bytes (or link target) and mtime."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                state[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                state[rel] = ("dir",)
            else:
                state[rel] = ("file", path.read_bytes(), path.stat().st_mtime_ns)
    return state
