"""Locking against the real PyPI with uv, and downloading what the lock names.

Needs PyPI (directly or through the proxies and CA bundle in the environment):
a skip on a developer's machine without it, a failure under CI.
"""

from __future__ import annotations

import hashlib
import ssl
import time
import urllib.request
from pathlib import Path

import pytest

from venvoy.build.lock import (
    Platform,
    ResolveError,
    ca_bundle,
    files_to_fetch,
    lock_hash,
    parse,
    requirements_txt,
    resolve,
    uv_binary,
)
from venvoy.build.wheels import WheelCache
from venvoy.core.errors import VenvoyError

from .conftest import unavailable

pytestmark = pytest.mark.integration

PY311 = Platform("3.11", "x86_64", "2.36")


@pytest.fixture(scope="module")
def pypi() -> None:
    try:
        uv_binary()
    except VenvoyError as exc:
        unavailable(str(exc))
    context = ssl.create_default_context(cafile=ca_bundle())
    try:
        with urllib.request.urlopen("https://pypi.org/simple/six/", timeout=20, context=context) as r:
            r.read(1)
    except OSError as exc:
        unavailable(f"PyPI is unreachable: {exc}")


@pytest.fixture(scope="module")
def six_numpy(pypi: None) -> str:
    start = time.monotonic()
    text = resolve("six\nnumpy  # the array library\n", PY311)
    print(f"resolved six+numpy in {time.monotonic() - start:.1f}s")
    return text


def test_lock_parses_with_hashes(six_numpy: str) -> None:
    pkgs = {p.name: p for p in parse(six_numpy)}
    assert set(pkgs) == {"six", "numpy"}
    for pkg in pkgs.values():
        assert pkg.wheels, pkg
        for f in [*pkg.wheels, *([pkg.sdist] if pkg.sdist else [])]:
            assert len(f.sha256) == 64 and int(f.sha256, 16) >= 0
            assert f.url.startswith("https://")
            assert f"sha256 = \"{f.sha256}\"" in six_numpy
    (numpy_wheel,) = pkgs["numpy"].wheels  # uv keeps only the wheel for CPython 3.11 on x86_64 Linux
    assert "cp311" in numpy_wheel.filename and "manylinux" in numpy_wheel.filename
    assert "x86_64" in numpy_wheel.filename
    assert pkgs["six"].wheels[0].filename.endswith("-py2.py3-none-any.whl")
    lines = requirements_txt(list(pkgs.values())).splitlines()
    assert any(line.startswith(f"numpy=={pkgs['numpy'].version} --hash=sha256:") for line in lines)


def test_lock_is_deterministic(six_numpy: str) -> None:
    again = resolve("six\nnumpy  # the array library\n", PY311)
    assert again == six_numpy
    assert lock_hash(again) == lock_hash(six_numpy)
    assert "/tmp" not in six_numpy and "venvoy-lock-" not in six_numpy


def test_other_architecture(pypi: None) -> None:
    (numpy,) = parse(resolve("numpy", Platform("3.11", "aarch64", "2.36")))
    assert numpy.wheels and all("aarch64" in w.filename for w in numpy.wheels)


def test_previous_pins_are_kept(pypi: None) -> None:
    old = resolve("six==1.16.0", PY311)
    assert [(p.name, p.version) for p in parse(old)] == [("six", "1.16.0")]
    kept = resolve("six", PY311, previous=old)
    assert [(p.name, p.version) for p in parse(kept)] == [("six", "1.16.0")]
    newest = resolve("six", PY311)
    upgraded = resolve("six", PY311, previous=old, upgrade=True)
    assert upgraded == newest
    assert parse(upgraded)[0].version != "1.16.0"


def test_download_into_cache(six_numpy: str, tmp_path: Path) -> None:
    files = files_to_fetch(parse(six_numpy))
    assert {f.filename.split("-")[0] for f in files} == {"six", "numpy"}
    cache = WheelCache(tmp_path / "cache" / "wheels")
    seen: dict[str, int] = {}

    def progress(name: str, done: int, total: int) -> None:
        seen[name] = done

    start = time.monotonic()
    paths = cache.fetch(files, progress=progress)
    print(f"downloaded {len(files)} files in {time.monotonic() - start:.1f}s")
    for f, path in zip(files, paths, strict=True):
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == f.sha256
        assert f.size is None or len(data) == f.size
        assert seen[f.filename] == len(data)
        assert path == cache.path_for(f)
    assert cache.fetch(files, offline=True) == paths
    dest = tmp_path / "context" / "wheels"
    cache.link_into(paths, dest)
    assert sorted(p.name for p in dest.iterdir()) == sorted(f.filename for f in files)


def test_unknown_package_is_one_line(pypi: None) -> None:
    with pytest.raises(ResolveError) as info:
        resolve("six\nnonexistent-pkg-xyz\n", PY311)
    assert str(info.value) == ("cannot resolve requirements: no package named 'nonexistent-pkg-xyz' "
                               "on the index; check the name")
    assert "\n" not in str(info.value)
