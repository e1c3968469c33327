"""The content-addressed wheel cache, fed from file:// URLs, local paths and a local HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from venvoy.build.lock import LockedFile
from venvoy.build.wheels import WheelCache
from venvoy.core.errors import VenvoyError


def source(tmp_path: Path, name: str, data: bytes) -> tuple[Path, LockedFile]:
    """A file to fetch, and the lock's entry for it (by file:// URL)."""
    src = tmp_path / "src" / name
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(data)
    return src, LockedFile(src.as_uri(), name, hashlib.sha256(data).hexdigest(), len(data))


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".part")]


@pytest.fixture
def cache(tmp_path: Path) -> WheelCache:
    return WheelCache(tmp_path / "cache" / "wheels")


def test_path_for_is_content_addressed(cache: WheelCache) -> None:
    f = LockedFile("https://x/a-1-py3-none-any.whl", "a-1-py3-none-any.whl", "AB" + "c" * 62, None)
    assert cache.path_for(f) == cache.root / "sha256" / "ab" / ("ab" + "c" * 62) / "a-1-py3-none-any.whl"


@pytest.mark.parametrize(("sha", "name"), [("x" * 64, "a.whl"), ("a" * 63, "a.whl"), ("a" * 64, "../a.whl"),
                                           ("a" * 64, ""), ("a" * 64, "..")])
def test_path_for_refuses_bad_entries(cache: WheelCache, sha: str, name: str) -> None:
    with pytest.raises(VenvoyError):
        cache.path_for(LockedFile("https://x/a.whl", name, sha, None))


def test_fetch_file_urls_and_paths(tmp_path: Path, cache: WheelCache) -> None:
    a_src, a = source(tmp_path, "a-1.0-py3-none-any.whl", b"A" * 3_000_000)
    b_src, b = source(tmp_path, "b-1.0.tar.gz", b"B" * 10)
    b = LockedFile(str(b_src), b.filename, b.sha256, None)  # a plain path, no size known
    calls: list[tuple[str, int, int]] = []
    paths = cache.fetch([a, b, a], progress=lambda *args: calls.append(args))
    assert paths == [cache.path_for(a), cache.path_for(b), cache.path_for(a)]
    assert paths[0].read_bytes() == a_src.read_bytes() and paths[1].read_bytes() == b"B" * 10
    assert oct(paths[0].stat().st_mode & 0o777) == oct(0o644)
    done = {(name, total): n for name, n, total in calls}
    assert done == {(a.filename, 3_000_000): 3_000_000, (b.filename, 10): 10}  # last call per file
    assert [n for name, n, _ in calls if name == a.filename] == sorted(n for name, n, _ in calls
                                                                        if name == a.filename)
    assert leftovers(cache.root) == []
    # cached now: the sources may go, and offline is fine
    a_src.unlink()
    b_src.unlink()
    calls.clear()
    assert cache.fetch([a, b], offline=True, progress=lambda *args: calls.append(args)) == paths[:2]
    assert calls == []


def test_hash_mismatch(tmp_path: Path, cache: WheelCache) -> None:
    _, good = source(tmp_path, "a-1.0-py3-none-any.whl", b"the real thing")
    bad = LockedFile(good.url, good.filename, "0" * 64, None)
    with pytest.raises(VenvoyError) as info:
        cache.fetch([bad])
    message = str(info.value)
    assert "a-1.0-py3-none-any.whl" in message and "0" * 64 in message and good.sha256 in message
    assert "\n" not in message
    assert not cache.path_for(bad).exists()
    assert leftovers(cache.root) == []


def test_offline_missing(tmp_path: Path, cache: WheelCache) -> None:
    files = [source(tmp_path, f"p{i}-1.0-py3-none-any.whl", bytes([i]))[1] for i in range(3)]
    cache.fetch(files[:1])
    with pytest.raises(VenvoyError) as info:
        cache.fetch(files, offline=True)
    assert "2 of 3 files are not in the wheel cache" in str(info.value)
    assert "without --offline" in str(info.value)
    assert not cache.path_for(files[1]).exists()


def test_wrong_size_in_cache_is_fetched_again(tmp_path: Path, cache: WheelCache) -> None:
    _, f = source(tmp_path, "a-1.0-py3-none-any.whl", b"0123456789")
    path = cache.path_for(f)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"01234")  # truncated by something outside venvoy
    assert cache.fetch([f])[0].read_bytes() == b"0123456789"


def test_corrupt_cached_file_of_the_right_size_is_fetched_again(tmp_path: Path,
                                                                 cache: WheelCache) -> None:
    """Issue 8 item 7: a damaged entry of the right size used to fail every later init."""
    src, f = source(tmp_path, "c-1.0-py3-none-any.whl", b"C" * 4096)
    (path,) = cache.fetch([f])
    path.write_bytes(b"X" * 4096)  # same size, wrong bytes
    assert cache.fetch([f]) == [path]
    assert path.read_bytes() == src.read_bytes()
    assert leftovers(cache.root) == []


def test_corrupt_cached_file_offline_is_a_clear_refusal(tmp_path: Path, cache: WheelCache) -> None:
    _, f = source(tmp_path, "c-1.0-py3-none-any.whl", b"C" * 4096)
    (path,) = cache.fetch([f])
    path.write_bytes(b"X" * 4096)
    with pytest.raises(VenvoyError, match="damaged there") as info:
        cache.fetch([f], offline=True)
    assert "\n" not in str(info.value)
    assert not path.exists()  # never handed out, never exported


def test_corrupt_cached_file_whose_source_changed_is_refused(tmp_path: Path, cache: WheelCache) -> None:
    src, f = source(tmp_path, "c-1.0-py3-none-any.whl", b"C" * 4096)
    (path,) = cache.fetch([f])
    path.write_bytes(b"X" * 4096)
    src.write_bytes(b"D" * 4096)  # the index now serves another file
    with pytest.raises(VenvoyError, match="does not match the sha256 the lock gives"):
        cache.fetch([f])
    assert not path.exists() and leftovers(cache.root) == []


def test_missing_source(tmp_path: Path, cache: WheelCache) -> None:
    f = LockedFile((tmp_path / "gone.whl").as_uri(), "gone.whl", "a" * 64, None)
    with pytest.raises(VenvoyError, match=re.escape("cannot read gone.whl")):
        cache.fetch([f])
    assert leftovers(cache.root) == []


def test_concurrent_fetch_of_one_file(tmp_path: Path, cache: WheelCache) -> None:
    """Eight threads (each with its own cache object, as separate processes would) race for one file."""
    _, f = source(tmp_path, "big-1.0-py3-none-any.whl", os.urandom(8 << 20))
    barrier = threading.Barrier(8)
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            results.extend(WheelCache(cache.root).fetch([f]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == [cache.path_for(f)] * 8
    assert hashlib.sha256(results[0].read_bytes()).hexdigest() == f.sha256
    assert sorted(p.name for p in results[0].parent.iterdir()) == [f.filename]


def test_many_files_in_parallel(tmp_path: Path, cache: WheelCache) -> None:
    files = [source(tmp_path, f"p{i}-1.0-py3-none-any.whl", os.urandom(1000 + i))[1] for i in range(20)]
    paths = cache.fetch(files, jobs=4)
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths] == [f.sha256 for f in files]


class Broken:
    """A source stream that fails after its first chunk."""

    def __init__(self) -> None:
        self.reads = 0

    def read(self, n: int) -> bytes:
        self.reads += 1
        if self.reads > 1:
            raise ConnectionResetError("connection reset by peer")
        return b"x" * 1000

    def __enter__(self) -> Broken:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def test_no_partial_file_after_a_failure(tmp_path: Path, cache: WheelCache,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _, f = source(tmp_path, "a-1.0-py3-none-any.whl", b"y" * 5000)
    opened: list[int] = []

    def broken_open(self: WheelCache, lf: LockedFile) -> tuple[Broken, int]:
        opened.append(1)
        return Broken(), 5000

    monkeypatch.setattr(WheelCache, "_open", broken_open)
    monkeypatch.setattr("venvoy.build.wheels.time.sleep", lambda s: None)
    with pytest.raises(VenvoyError, match=r"cannot download a-1\.0-py3-none-any\.whl.*connection reset"):
        cache.fetch([f])
    assert len(opened) == 3  # retried
    assert not cache.path_for(f).exists()
    assert leftovers(cache.root) == []


def test_no_partial_file_when_interrupted(tmp_path: Path, cache: WheelCache) -> None:
    _, f = source(tmp_path, "a-1.0-py3-none-any.whl", b"z" * (3 << 20))
    _, g = source(tmp_path, "b-1.0-py3-none-any.whl", b"w" * (3 << 20))

    def interrupt(name: str, done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.fetch([f], progress=interrupt)
    with pytest.raises(VenvoyError, match="download failed"):  # the same, in worker threads
        cache.fetch([f, g], progress=lambda *a: (_ for _ in ()).throw(RuntimeError("stop")))
    assert not cache.path_for(f).exists() and not cache.path_for(g).exists()
    assert leftovers(cache.root) == []


def test_stale_parts_are_cleaned(tmp_path: Path, cache: WheelCache) -> None:
    _, f = source(tmp_path, "a-1.0-py3-none-any.whl", b"data")
    entry = cache.path_for(f).parent
    entry.mkdir(parents=True)
    stale, fresh = entry / ".a.whl.old.part", entry / ".a.whl.new.part"
    stale.write_text("")
    fresh.write_text("")
    os.utime(stale, (1, 1))
    cache.fetch([f])
    assert not stale.exists() and fresh.exists()  # a fresh one may be another process's download


# --------------------------------------------------------------------------- HTTP


class Handler(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    Handler.files, Handler.hits = {}, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_http_download(server: str, cache: WheelCache) -> None:
    data = os.urandom(2 << 20)
    Handler.files["/pkgs/a-1.0-py3-none-any.whl"] = data
    f = LockedFile(f"{server}/pkgs/a-1.0-py3-none-any.whl", "a-1.0-py3-none-any.whl",
                   hashlib.sha256(data).hexdigest(), None)
    totals: set[int] = set()
    (path,) = cache.fetch([f], progress=lambda name, done, total: totals.add(total))
    assert path.read_bytes() == data
    assert totals == {len(data)}  # from Content-Length
    cache.fetch([f])
    assert Handler.hits == ["/pkgs/a-1.0-py3-none-any.whl"]  # the second time from the cache


def test_http_not_found(server: str, cache: WheelCache) -> None:
    f = LockedFile(f"{server}/pkgs/gone-1.0.tar.gz", "gone-1.0.tar.gz", "a" * 64, None)
    with pytest.raises(VenvoyError, match=re.escape("cannot download gone-1.0.tar.gz: HTTP 404")):
        cache.fetch([f])
    assert leftovers(cache.root) == []


def test_http_unreachable(cache: WheelCache, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("venvoy.build.wheels.time.sleep", lambda s: None)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    f = LockedFile("http://127.0.0.1:9/a-1.0.tar.gz", "a-1.0.tar.gz", "a" * 64, None)
    expected = re.escape("cannot download a-1.0.tar.gz from http://127.0.0.1:9/")
    with pytest.raises(VenvoyError, match=expected) as info:
        cache.fetch([f])
    assert "network" in info.value.hint


def test_unsupported_scheme(cache: WheelCache) -> None:
    with pytest.raises(VenvoyError, match="unsupported URL scheme 'ftp'"):
        cache.fetch([LockedFile("ftp://x/a.whl", "a.whl", "a" * 64, None)])


# --------------------------------------------------------------------------- link_into


def test_link_into(tmp_path: Path, cache: WheelCache) -> None:
    _, a = source(tmp_path, "a-1.0-py3-none-any.whl", b"a")
    _, b = source(tmp_path, "b-1.0-py3-none-any.whl", b"b")
    paths = cache.fetch([a, b])
    dest = tmp_path / "ctx" / "wheels"
    (dest).mkdir(parents=True)
    (dest / "b-1.0-py3-none-any.whl").write_bytes(b"stale")
    cache.link_into(paths, dest)
    cache.link_into(paths, dest)  # again: nothing changes
    assert sorted(p.name for p in dest.iterdir()) == ["a-1.0-py3-none-any.whl", "b-1.0-py3-none-any.whl"]
    for p in paths:
        assert (dest / p.name).samefile(p)


def test_link_into_copies_when_links_fail(tmp_path: Path, cache: WheelCache,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _, a = source(tmp_path, "a-1.0-py3-none-any.whl", b"a")
    (path,) = cache.fetch([a])

    def no_link(src: object, dst: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    dest = tmp_path / "ctx"
    cache.link_into([path], dest)
    assert (dest / path.name).read_bytes() == b"a" and not (dest / path.name).samefile(path)
    assert leftovers(dest) == []
