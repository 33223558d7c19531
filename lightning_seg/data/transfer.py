"""Downloading one file whole or not at all: byte count, optional pinned SHA-256, one error naming the URL.

:func:`fetch` writes to a hidden ``.part`` file beside the destination and renames it only after every
check passed, so no partial or unverified download ever carries a final name. Every way a transfer can
fail (HTTP status, refused connection, timeout, a body shorter or longer than its ``Content-Length``, a
chunked body cut short, a malformed URL, a full disk) is one :class:`DownloadError` naming the URL and
the file; the ``.part`` file is removed.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .manifest import ChecksumError, sha256_file

_CHUNK = 1 << 20


class DownloadError(OSError):
    """A transfer failed; the message names the URL and the destination. ``missing``: the source has no such file."""

    def __init__(self, message: str, missing: bool = False):
        super().__init__(message)
        self.missing = missing


def _is_missing(err: BaseException) -> bool:
    """Whether ``err`` says the file does not exist at the source (HTTP 404/410, or a missing local file)."""
    if isinstance(err, urllib.error.HTTPError):
        return err.code in (404, 410)
    return isinstance(err, urllib.error.URLError) and isinstance(err.reason, FileNotFoundError)


def fetch(url: str, dest: str | Path, sha256: str | None = None, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest``; with ``sha256``, the bytes must hash to it.

    A file already at ``dest`` that matches a pinned ``sha256`` is kept (an unpinned one is fetched again).

    Raises:
        DownloadError: the transfer failed or was cut short (the message names ``url``, ``dest`` and the cause).
        ChecksumError: the bytes arrived whole but hash to something other than ``sha256``.

    Example:
        >>> fetch("https://example.org/a.zip", Path("data/.downloads/a.zip"), sha256=None)  # doctest: +SKIP
    """
    dest = Path(dest)
    if sha256 is not None and dest.is_file() and sha256_file(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    part = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _transfer(url, dest, out, progress, timeout)
        if sha256 is not None and digest != sha256:
            raise ChecksumError(
                f"{dest.name} downloaded from {url} has SHA-256 {digest}, expected {sha256}: the server holds a "
                f"different file or the transfer was altered. Nothing was kept; use another mirror or report it."
            )
        os.chmod(part, 0o644)  # mkstemp creates 0600
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return dest


def _transfer(url: str, dest: Path, out, progress: bool, timeout: float) -> str:
    """Stream ``url`` into ``out``; return the SHA-256 of the bytes, which are exactly ``Content-Length`` if given."""
    digest = hashlib.sha256()
    received, expected = 0, None
    request = urllib.request.Request(url, headers={"User-Agent": "lightning-seg"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None:
                if not length.strip().isdigit():
                    raise http.client.HTTPException(f"malformed Content-Length {length!r}")
                expected = int(length)
            with _Progress(dest.name, expected, progress) as advance:
                # http.client returns b"" (no error) when a body with a Content-Length ends early: count the bytes
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    advance(len(chunk))
    except (OSError, http.client.HTTPException, ValueError) as err:
        # URLError/HTTPError, timeouts, resets and disk errors are OSErrors; IncompleteRead and bad status
        # lines are HTTPExceptions; a malformed URL is a ValueError.
        raise DownloadError(
            f"could not download {url} to {dest}: {type(err).__name__}: {err}. Nothing was kept; check the URL or "
            f"mirror and fetch again.",
            missing=_is_missing(err),
        ) from err
    if expected is not None and received != expected:
        raise DownloadError(
            f"could not download {url} to {dest}: received {received:,} bytes, but the server announced "
            f"{expected:,} (Content-Length); the transfer was cut short. Nothing was kept; fetch again."
        )
    return digest.hexdigest()


class _Progress:
    """A rich progress bar for one download (a no-op when disabled)."""

    def __init__(self, name: str, total: int | None, enabled: bool):
        self.name, self.total, self.enabled = name, total, enabled

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
        self.bar.__enter__()
        task = self.bar.add_task(self.name, total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)
