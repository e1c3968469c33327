"""A content-addressed cache of the files (wheels, sdists) that locks name.

Entries live at ``<root>/sha256/<2 hex>/<64 hex>/<filename>``, so every
environment shares one copy of each file and a file is trusted by where it
lies: it only gets there after its sha256 was checked while it was
downloaded to a temporary name in the same directory and renamed into place.
A file is checked again (size and sha256) each time it is reused; a damaged
one is removed and downloaded again, so a bad byte on disk costs one
download, not every later ``init``, and is never exported.
Many processes may fill the cache at once; the worst a race costs is a
download done twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlsplit

from venvoy.build.lock import LockedFile, ca_bundle
from venvoy.core.errors import VenvoyError
from venvoy.core.fs import TMP_PREFIX, clean_stale, new_path, sha256_file, temp_name

Progress = Callable[[str, int, int], None]

_CHUNK = 1 << 20
_TIMEOUT = 60.0  # seconds without data before a download is given up
_ATTEMPTS = 3
_PART = ".part"
_STALE_PART = 24 * 3600  # temporary files older than this are left-overs of a killed process


def _is_local(url: str) -> bool:
    scheme = urlsplit(url).scheme
    return scheme in ("", "file") or len(scheme) == 1  # a bare path, file://, or C:\ on Windows


def _local_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.scheme == "file":
        return Path(urllib.request.url2pathname(unquote(parts.path)))
    return Path(url)


class _Opener:
    """urllib opener that trusts the configured CA bundle and follows *_PROXY (urllib's default)."""

    def __init__(self) -> None:
        self._opener: urllib.request.OpenerDirector | None = None
        self._lock = threading.Lock()

    def open(self, url: str) -> IO[bytes]:
        with self._lock:
            if self._opener is None:
                context = ssl.create_default_context(cafile=ca_bundle())
                self._opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
        request = urllib.request.Request(url, headers={"User-Agent": "venvoy"})  # noqa: S310 - http(s) only
        response: IO[bytes] = self._opener.open(request, timeout=_TIMEOUT)
        return response


class WheelCache:
    """Content-addressed store of downloaded distribution files."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._opener = _Opener()

    def path_for(self, f: LockedFile) -> Path:
        """Where ``f`` lies in the cache (whether or not it is there yet)."""
        digest = f.sha256.lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise VenvoyError(f"bad sha256 {f.sha256!r} for {f.filename}", "re-create the lock")
        name = f.filename
        if not name or name in {".", ".."} or "/" in name or "\\" in name or "\0" in name:
            raise VenvoyError(f"bad file name {name!r} in the lock", "re-create the lock")
        return self.root / "sha256" / digest[:2] / digest / name

    def _cached(self, f: LockedFile, path: Path) -> bool:
        try:
            st = path.stat()
        except OSError:
            return False
        return f.size is None or st.st_size == f.size

    def _verified(self, f: LockedFile, path: Path) -> bool:
        """Whether ``path`` holds ``f`` (size and sha256); a damaged entry is removed."""
        if not self._cached(f, path):
            if path.exists():
                self._discard(path)
            return False
        try:
            ok = sha256_file(path) == f.sha256.lower()
        except OSError:
            return False
        if not ok:
            self._discard(path)
        return ok

    @staticmethod
    def _discard(path: Path) -> None:
        with contextlib.suppress(OSError):
            path.unlink()

    def fetch(self, files: list[LockedFile], *, offline: bool = False, jobs: int = 8,
              progress: Progress | None = None) -> list[Path]:
        """Cached paths of ``files`` (in order), downloading the missing ones in parallel.

        Each download is checked against its sha256 as it streams into a
        temporary file beside the entry, then renamed into place; a mismatch
        deletes it and raises. ``offline`` never touches the network.
        ``progress(filename, bytes_done, bytes_total)`` may be called from threads.
        """
        paths = [self.path_for(f) for f in files]
        unique = dict(zip(paths, files, strict=True))
        with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(unique))),
                                thread_name_prefix="venvoy-check") as pool:
            good = list(pool.map(lambda item: self._verified(item[1], item[0]), unique.items()))
        missing = {path: f for (path, f), ok in zip(unique.items(), good, strict=True) if not ok}
        if not missing:
            return paths
        if offline:
            example = next(iter(missing.values())).filename
            raise VenvoyError(f"{len(missing)} of {len(set(paths))} files are not in the wheel cache "
                              f"or were damaged there (e.g. {example}) and --offline forbids "
                              "downloading them", "run once without --offline to download them")
        todo = list(missing.items())
        workers = max(1, min(jobs, len(todo)))
        if workers == 1:
            for path, f in todo:
                self._download(f, path, progress)
            return paths
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="venvoy-fetch") as pool:
            futures = [pool.submit(self._download, f, path, progress) for path, f in todo]
            _, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for future in pending:
                future.cancel()
            errors = [exc for future in futures if future.done() and not future.cancelled()
                      if (exc := future.exception()) is not None]
        if errors:
            first = errors[0]
            if isinstance(first, VenvoyError):
                raise first
            raise VenvoyError(f"download failed: {first}", "try again") from first
        return paths

    # ------------------------------------------------------------------ one file

    def _download(self, f: LockedFile, path: Path, progress: Progress | None) -> None:
        if self._cached(f, path):  # another process (or an earlier duplicate) got there first
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_parts(path.parent)
        for attempt in range(_ATTEMPTS):
            try:
                self._download_once(f, path, progress)
                return
            except _Transient as exc:
                if attempt == _ATTEMPTS - 1:
                    raise VenvoyError(f"cannot download {f.filename} from {_show(f.url)}: {exc}",
                                      "check the network connection, the proxy settings (HTTPS_PROXY) "
                                      "and the CA bundle (SSL_CERT_FILE)") from None
                time.sleep(0.5 * 2**attempt)

    def _open(self, f: LockedFile) -> tuple[IO[bytes], int]:
        """The source stream of ``f`` and its size (0 when unknown)."""
        if _is_local(f.url):
            source = _local_path(f.url)
            try:
                fh = source.open("rb")
            except OSError as exc:
                raise VenvoyError(f"cannot read {f.filename} at {source}: {exc.strerror or exc}",
                                  "is the file still there?") from None
            return fh, f.size or os.fstat(fh.fileno()).st_size
        scheme = urlsplit(f.url).scheme
        if scheme not in ("http", "https"):
            raise VenvoyError(f"cannot download {f.filename}: unsupported URL scheme {scheme!r}",
                              "locks may name http(s):// or file:// URLs, or local paths")
        try:
            response = self._opener.open(f.url)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code >= 500 or exc.code == 429:
                raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
            raise VenvoyError(f"cannot download {f.filename}: HTTP {exc.code} {exc.reason} "
                              f"from {_show(f.url)}",
                              "the file may have been removed from the index; re-create the lock") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, ssl.SSLError):
                raise VenvoyError(f"cannot download {f.filename}: TLS error: {reason.reason or reason}",
                                  "set SSL_CERT_FILE to the CA bundle that signed the server's certificate",
                                  ) from None
            raise _Transient(str(reason)) from None
        length = response.headers.get("Content-Length") if hasattr(response, "headers") else None
        total = f.size or (int(length) if length and length.isdigit() else 0)
        return response, total

    def _download_once(self, f: LockedFile, path: Path, progress: Progress | None) -> None:
        # Written under an owner-tagged temporary name, renamed when the hash
        # matches (venvoy.core.fs.new_path): never resumed, never seen partial.
        with new_path(path, mode=0o644) as tmp:
            with open(tmp, "wb") as out:
                source, total = self._open(f)
                digest = hashlib.sha256()
                done = 0
                with source:
                    while True:
                        try:
                            chunk = source.read(_CHUNK)
                        except (OSError, http.client.HTTPException) as exc:  # reset or timed out mid-stream
                            raise _Transient(str(exc) or type(exc).__name__) from None
                        if not chunk:
                            break
                        digest.update(chunk)
                        out.write(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(f.filename, done, total)
                out.flush()
                os.fsync(out.fileno())
            got = digest.hexdigest()
            if got != f.sha256.lower():
                if total and done < total:
                    raise _Transient(f"connection closed after {done} of {total} bytes")
                raise VenvoyError(f"{f.filename} does not match the sha256 the lock gives "
                                  f"(expected {f.sha256.lower()}, got {got})",
                                  "the server sent another file than the lock names; "
                                  "re-create the lock or check the index and proxy")

    # ------------------------------------------------------------------ build contexts

    def link_into(self, paths: list[Path], dest: Path) -> None:
        """Put each file into ``dest/<filename>``: a hard link, or a copy across file systems."""
        dest.mkdir(parents=True, exist_ok=True)
        for src in dict.fromkeys(paths):
            target = dest / src.name
            with contextlib.suppress(OSError):
                if target.samefile(src):
                    continue
            tmp = dest / temp_name(f"{TMP_PREFIX}{src.name[:80]}")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            try:
                os.link(src, tmp)
            except OSError:  # another file system, protected_hardlinks, link count limit, ...
                try:
                    shutil.copy2(src, tmp)
                except OSError as exc:
                    with contextlib.suppress(FileNotFoundError):
                        tmp.unlink()
                    raise VenvoyError(f"cannot copy {src.name} into {dest}: {exc.strerror or exc}",
                                      "check the free space and permissions there") from None
            os.replace(tmp, target)


class _Transient(Exception):
    """A failure worth another try (connection reset, timeout, HTTP 5xx)."""


def _show(url: str) -> str:
    """The URL without credentials, for messages."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return parts._replace(netloc=host).geturl()
    return url


def _remove_stale_parts(directory: Path) -> None:
    clean_stale(directory)  # owner-tagged temporaries whose owner is gone
    now = time.time()  # and the .part files of venvoy before owner tags
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            if entry.name.endswith(_PART):
                with contextlib.suppress(OSError):
                    if now - entry.stat().st_mtime > _STALE_PART:
                        os.unlink(entry.path)


__all__ = ["WheelCache"]
