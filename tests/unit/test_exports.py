"""Exports (lock, Containerfile, Apptainer definition, wheelhouse) and wheelhouse import,
without a container runtime: locks name file:// wheels, the other-arch lock is faked."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from venvoy.build import lock as locking
from venvoy.core.errors import DamagedError, VenvoyError
from venvoy.store import records
from venvoy.store.layout import Store
from venvoy.store.records import Environment
from venvoy.transport import common, contexts, lockfile, wheelhouse

HEX = "ab" * 32


def wheel(tmp_path: Path, name: str, data: bytes) -> str:
    """A lock ``wheels`` entry for a local file."""
    src = tmp_path / "src" / name
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    return f'{{ url = "{src.as_uri()}", size = {len(data)}, hashes = {{ sha256 = "{digest}" }} }}'


def lock_for(tmp_path: Path, arch: str) -> str:
    fast = wheel(tmp_path, f"fastthing-1.0-cp311-cp311-manylinux_2_17_{arch}.whl", arch.encode() * 9)
    return (
        'lock-version = "1.0"\ncreated-by = "uv"\nrequires-python = ">=3.11"\n\n'
        '[[packages]]\nname = "fastthing"\nversion = "1.0"\n'
        f"wheels = [{fast}]\n\n"
        '[[packages]]\nname = "six"\nversion = "1.17.0"\n'
        f"wheels = [{wheel(tmp_path, 'six-1.17.0-py2.py3-none-any.whl', b'six' * 50)}]\n"
    )


def make_env(tmp_path: Path, **extra: Any) -> Environment:
    store = Store(tmp_path / "home")
    text = lock_for(tmp_path, "x86_64")
    data: dict[str, Any] = {
        "name": "t", "python": "3.11", "requirements": "fastthing\nsix\n", "base": None,
        "base_source": "debian bookworm bootstrap", "base_image_id": "sha256:" + "cd" * 32,
        "glibc": "2.36", "identity": "ef" * 32, "image_id": "sha256:" + "12" * 32,
        "lock_hash": locking.lock_hash(text), "inputs": "00" * 32, "built_with": "podman",
        "packages": 2, "created": "2026-01-02T03:04:05Z", "venvoy_version": "0.1.0", "recipe": "1",
    } | extra
    return records.write_env(store, records.EnvRecord.from_dict(data, "test", ""), text)


@pytest.fixture
def env(tmp_path: Path) -> Environment:
    return make_env(tmp_path)


# --------------------------------------------------------------------------- generated text


@pytest.mark.parametrize(("text", "ok"), [
    ("python:3.11-slim", True), ("docker.io/library/python:3.11-slim", True),
    ("localhost/venvoy-base:cc048753a1c5", True), ("registry.example:5000/a/b@sha256:" + "a" * 64, True),
    ("/var/cache/base.tar", False), ("base.tar", False), ("./img", False), ("a b", False),
    ('x"y', False), ("x$HOME", False), ("x\nFROM evil", False), ("Upper/Case", False), ("", False),
])
def test_is_reference(text: str, ok: bool) -> None:
    assert contexts.is_reference(text) is ok


def test_containerfile_default_base_and_labels(env: Environment) -> None:
    text = contexts.containerfile_text(env, arch="x86_64", base=contexts.base_reference(env))
    assert "ARG BASE=docker.io/library/python:3.11-slim\n" in text
    assert text.count("FROM ${BASE}") == 2 and "FROM ${BASE} AS build\n" in text
    assert "ENV PATH=/opt/venv/bin:$PATH VIRTUAL_ENV=/opt/venv\n" in text
    assert "--no-index --no-deps --require-hashes" in text and 'v == "3.11"' in text
    for key, value in {"version": "0.1.0", "lock-hash": env.lock_hash, "python": "3.11",
                       "base-digest": "sha256:" + "cd" * 32, "identity": "ef" * 32,
                       "build-time": "2026-01-02T03:04:05Z", "name": "t"}.items():
        assert f'org.venvoy.{key}="{value}"' in text
    assert "COPY --from=build /opt/venv /opt/venv\n" in text


def test_base_reference_kept_when_it_was_one(tmp_path: Path) -> None:
    assert contexts.base_reference(make_env(tmp_path, base="localhost/mybase:1")) == "localhost/mybase:1"


@pytest.mark.parametrize("base", ["/srv/base.tar", "rootfs.tar.gz", 'evil"; rm -rf /', "a b"])
def test_base_path_or_junk_gives_official(tmp_path: Path, base: str) -> None:
    env = make_env(tmp_path, base=base)
    assert contexts.base_reference(env) == "docker.io/library/python:3.11-slim"
    assert base not in contexts.containerfile_text(env, arch="x86_64", base=contexts.base_reference(env))


def test_official_registry_override(env: Environment, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VENVOY_BASE_REGISTRY", "mirror.example/lib")
    assert contexts.base_reference(env) == "mirror.example/lib/python:3.11-slim"


def test_generated_text_refuses_bad_base(env: Environment) -> None:
    with pytest.raises(VenvoyError, match="bad base image reference"):
        contexts.containerfile_text(env, arch="x86_64", base="x\nRUN evil")
    with pytest.raises(VenvoyError, match="bad base image reference"):
        contexts.apptainer_def_text(env, arch="x86_64", base="a b")


@pytest.mark.parametrize(("key", "value"), [
    ("lock_hash", 'abc" \\\nRUN evil'), ("created", "$(reboot)"), ("identity", "x"),
    ("venvoy_version", "1 2"), ("base_image_id", "sha256:zz"), ("glibc", "2.36; rm"),
])
def test_bad_record_values_are_refused(tmp_path: Path, key: str, value: str) -> None:
    """A forged record never reaches generated text: reading it is one clear error."""
    with pytest.raises(DamagedError, match=f"'{key}'") as info:
        make_env(tmp_path, **{key: value})
    assert "\n" not in info.value.message


def test_dockerfile_quote() -> None:
    assert contexts._dockerfile_quote('a"b\\c$d') == '"a\\"b\\\\c\\$d"'


def test_apptainer_def(env: Environment) -> None:
    text = contexts.apptainer_def_text(env, arch="x86_64", base="python:3.11-slim")
    lines = text.splitlines()
    header = [ln for ln in lines if ln and not ln.startswith("#")]
    assert header[:2] == ["Bootstrap: {{ BOOTSTRAP }}", "From: {{ BASE }}"]
    args = text.split("%arguments\n")[1].split("\n\n")[0].split()
    assert args == ["BOOTSTRAP=docker", "BASE=python:3.11-slim", "CONTEXT=."]
    assert "    {{ CONTEXT }}/wheels /venvoy-build/wheels\n" in text
    assert "    export PATH=\"/opt/venv/bin:$PATH\"\n    export VIRTUAL_ENV=/opt/venv\n" in text
    assert f"    org.venvoy.lock-hash {env.lock_hash}\n" in text and "    org.venvoy.name t\n" in text
    assert "    rm -rf /venvoy-build\n" in text


# --------------------------------------------------------------------------- directories and lock


def test_export_containerfile_dir(env: Environment, tmp_path: Path) -> None:
    out = contexts.export_containerfile(env, tmp_path / "ctx")
    names = sorted(p.name for p in out.iterdir())
    assert names == [".venvoy-export", "Containerfile", "README.md", "pylock.toml", "requirements.txt",
                     "wheels"]
    wheels = sorted(p.name for p in (out / "wheels").iterdir())
    assert wheels == ["fastthing-1.0-cp311-cp311-manylinux_2_17_x86_64.whl",
                      "six-1.17.0-py2.py3-none-any.whl"]
    assert all((out / "wheels" / w).stat().st_nlink == 1 for w in wheels)  # copies, not cache links
    req = (out / "requirements.txt").read_text().splitlines()
    assert req[0].startswith("fastthing==1.0 --hash=sha256:") and req[1].startswith("six==1.17.0 --hash=")
    assert (out / "pylock.toml").read_text() == env.lock_text
    assert "podman build --network=none" in (out / "README.md").read_text()
    # exporting again replaces the earlier export
    (out / "stale").write_text("x")
    assert contexts.export_containerfile(env, tmp_path / "ctx") == out
    assert not (out / "stale").exists()


def test_export_apptainer_default_dir(env: Environment, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = contexts.export_apptainer_def(env, None)
    assert out == tmp_path / "t-apptainer" and (out / "t.def").is_file() and (out / "wheels").is_dir()


def test_export_refuses_foreign_directory(env: Environment, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(VenvoyError, match="not an earlier venvoy export"):
        contexts.export_containerfile(env, tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "x"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(VenvoyError, match="not a directory"):
        contexts.export_containerfile(env, tmp_path / "afile")


def test_export_lock(env: Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert lockfile.export_lock(env, None) == tmp_path / "t.pylock.toml"
    assert (tmp_path / "t.pylock.toml").read_text() == env.lock_text
    (tmp_path / "d").mkdir()
    assert lockfile.export_lock(env, tmp_path / "d") == tmp_path / "d" / "t.pylock.toml"
    assert lockfile.export_lock(env, tmp_path / "x.toml").read_text() == env.lock_text


# --------------------------------------------------------------------------- wheelhouse


@pytest.fixture
def fake_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []

    def resolve(requirements: str, platform: locking.Platform, *, previous: str | None = None,
                **_kw: Any) -> str:
        calls.append((requirements, platform, previous))
        return lock_for(tmp_path, platform.arch)

    monkeypatch.setattr(locking, "resolve", resolve)
    return calls


@pytest.fixture
def house(env: Environment, tmp_path: Path, fake_resolve: list[Any]) -> Path:
    (tmp_path / "out").mkdir()
    return wheelhouse.export_wheelhouse(env, tmp_path / "out")  # a directory: the default name in it


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}  # type: ignore[union-attr]


def test_export_wheelhouse(env: Environment, house: Path, fake_resolve: list[Any]) -> None:
    assert house.name == f"t-{env.lock_hash[:12]}.wheelhouse.tar"
    (requirements, platform, previous), = fake_resolve
    assert requirements == "fastthing\nsix\n" and previous == env.lock_text
    assert (platform.python, platform.arch, platform.glibc) == ("3.11", "aarch64", "2.36")
    with tarfile.open(house) as tar:
        names = tar.getnames()
    assert names[0] == "manifest.json"
    assert sorted(names[1:]) == sorted([
        "pylock.toml", "pylock.aarch64.toml", "wheels/six-1.17.0-py2.py3-none-any.whl",
        "wheels/fastthing-1.0-cp311-cp311-manylinux_2_17_x86_64.whl",
        "wheels/fastthing-1.0-cp311-cp311-manylinux_2_17_aarch64.whl"])
    files = members(house)
    manifest = json.loads(files.pop("manifest.json"))
    assert manifest["format"] == "venvoy-wheelhouse" and manifest["format_version"] == 1
    assert manifest["environment"]["name"] == "t" and manifest["environment"]["arch"] == "x86_64"
    assert manifest["locks"]["x86_64"] == {"path": "pylock.toml", "lock_hash": env.lock_hash}
    assert files["pylock.toml"].decode() == env.lock_text
    assert {n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in files.items()} \
        == manifest["members"]


def test_wheelhouse_without_other_arch(env: Environment, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_a: Any, **_kw: Any) -> str:
        raise locking.ResolveError("cannot resolve requirements: no wheels for aarch64", "x")

    monkeypatch.setattr(locking, "resolve", fail)
    said: list[str] = []
    house = wheelhouse.export_wheelhouse(env, tmp_path / "h.tar", progress=said.append)
    manifest = json.loads(members(house)["manifest.json"])
    assert list(manifest["locks"]) == ["x86_64"] and "aarch64" in manifest["missing_locks"]
    assert any("warning: no lock for aarch64" in s for s in said)
    monkeypatch.setattr(wheelhouse, "env_arch_here", lambda: "aarch64")
    with pytest.raises(VenvoyError, match=r"has no lock for aarch64 .*no wheels for aarch64"):
        wheelhouse.import_wheelhouse(house, store=Store(tmp_path / "other"))


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    got: dict[str, Any] = {}

    def init(name: str, **kw: Any) -> tuple[str, bool]:
        got.update(kw, name=name)
        got["wheels"] = sorted(p.name for p in kw["wheel_dirs"][0].iterdir())
        return "ENV", True

    monkeypatch.setattr("venvoy.build.environment.init", init)
    monkeypatch.setattr(wheelhouse, "env_arch_here", lambda: "x86_64")
    return got


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_import_picks_local_arch(env: Environment, house: Path, tmp_path: Path, arch: str,
                                 captured: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wheelhouse, "env_arch_here", lambda: arch)
    store = Store(tmp_path / "fresh")
    assert wheelhouse.import_wheelhouse(house, store=store, name="t2", runtime="podman",
                                     offline=True) == "ENV"  # type: ignore[comparison-overlap]
    expected = env.lock_text if arch == "x86_64" else lock_for(tmp_path, "aarch64")
    assert captured["lock_text"] == expected and captured["name"] == "t2"
    assert (captured["python"], captured["requirements_text"], captured["base"]) == (
        "3.11", "fastthing\nsix\n", None)
    assert (captured["runtime"], captured["offline"], captured["force"]) == ("podman", True, False)
    assert f"fastthing-1.0-cp311-cp311-manylinux_2_17_{arch}.whl" in captured["wheels"]
    assert captured["store"] is store
    assert list(store.tmp.iterdir()) == []  # the extracted files are gone


def test_import_base_override_and_existing(env: Environment, house: Path,
                                           captured: dict[str, Any]) -> None:
    wheelhouse.import_wheelhouse(house, store=env.store, name="t", base="/srv/b.tar")
    assert captured["base"] == "/srv/b.tar"  # same name, same lock: init decides what to do
    records.write_env(env.store, replace(env.record, lock_hash=locking.lock_hash("x")), "x")
    with pytest.raises(VenvoyError, match="already exists with another lock"):
        wheelhouse.import_wheelhouse(house, store=env.store)
    wheelhouse.import_wheelhouse(house, store=env.store, force=True)
    assert captured["force"] is True


def test_real_init_is_seeded_from_the_wheelhouse(env: Environment, house: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The real import + the real build.environment.init, up to the install step: every
    locked file comes into the fresh store's wheel cache from the wheelhouse, checked, and
    the build directory gets them, with the lock's URLs gone and no network reachable."""
    import socket
    import urllib.request
    from types import SimpleNamespace

    from venvoy.build import bases, wheels
    from venvoy.core import fs
    from venvoy.runtime import detect
    from venvoy.store import forms

    monkeypatch.setattr(wheelhouse, "env_arch_here", lambda: "x86_64")
    monkeypatch.setattr(locking, "host_arch", lambda: "x86_64")
    store = Store(tmp_path / "fresh")
    lock_files = locking.files_to_fetch(locking.parse(env.lock_text))
    expected = {f.filename: f.sha256 for f in lock_files}
    for f in lock_files:  # the URLs the lock names are gone: only the wheelhouse has the files
        Path(f.url.removeprefix("file://")).unlink()

    def no_network(*_a: Any, **_kw: Any) -> Any:
        raise AssertionError("a network request was made")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(wheels.WheelCache, "_download_once", no_network)
    # No runtime and no base image in a unit test: both stop at their edge.
    rt = SimpleNamespace(name="fake", rootless=True)
    monkeypatch.setattr(detect, "choose_runtime", lambda *_a, **_kw: SimpleNamespace(runtime=rt))
    base = SimpleNamespace(glibc="2.36", image_id="sha256:" + "cd" * 32, source="test",
                           archive=tmp_path / "base.tar")
    monkeypatch.setattr(bases, "resolve_base", lambda *_a, **_kw: base)
    reached: dict[str, Any] = {}

    class Reached(Exception):
        pass

    def ensure_native(st: Store, runtime: Any, *_a: Any, **_kw: Any) -> str:
        (build,) = [p for p in st.tmp.iterdir() if p.name.startswith((f"{fs.TMP_PREFIX}build-t",
                                                                      "build-t"))]
        reached["build"] = {p.name: fs.sha256_file(p) for p in (build / "wheels").iterdir()}
        reached["runtime"] = runtime
        raise Reached

    monkeypatch.setattr(forms, "ensure_native", ensure_native)
    with pytest.raises(Reached):
        wheelhouse.import_wheelhouse(house, store=store)
    assert reached["runtime"] is rt
    assert reached["build"] == expected  # the build got exactly the locked files
    cached = {p.name: fs.sha256_file(p) for p in store.wheels.rglob("*") if p.is_file()}
    assert sorted(cached.values()) == sorted(expected.values())  # seeded, each file checked
    assert not (store.envs / "t").exists()  # nothing was recorded: the build never finished


# --------------------------------------------------------------------------- damaged wheelhouses


def rewrite(src: Path, dst: Path, edit: Any) -> Path:
    """Copy a wheelhouse member by member, through ``edit(list of [TarInfo, bytes])``."""
    with tarfile.open(src) as tar:
        items = [[m, tar.extractfile(m).read() if m.isreg() else b""] for m in tar]  # type: ignore[union-attr]
    items = edit(items)
    with tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as out:
        for info, data in items:
            info.size = len(data) if info.isreg() else 0
            out.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return dst


def _tamper_wheel(items: list[Any]) -> list[Any]:
    for item in items:
        if item[0].name.endswith("six-1.17.0-py2.py3-none-any.whl"):
            item[1] = b"evil" + item[1][4:]
    return items


def _rename(old_suffix: str, new: str) -> Any:
    def edit(items: list[Any]) -> list[Any]:
        for info, _data in items:
            if info.name.endswith(old_suffix):
                info.name = new
        return items
    return edit


def _extra(info: tarfile.TarInfo, data: bytes = b"") -> Any:
    return lambda items: [*items, [info, data]]


def _link(name: str, kind: bytes, target: str = "/etc/passwd") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _manifest_edit(change: Any) -> Any:
    def edit(items: list[Any]) -> list[Any]:
        manifest = json.loads(items[0][1])
        change(manifest)
        items[0][1] = json.dumps(manifest).encode()
        return items
    return edit


def _listed_evil(manifest: dict[str, Any]) -> None:
    manifest["members"]["../evil"] = {"sha256": HEX, "size": 1}


@pytest.mark.parametrize(("edit", "match"), [
    (_tamper_wheel, "member 'wheels/six-1.17.0-py2.py3-none-any.whl' does not match its sha256"),
    (_rename("six-1.17.0-py2.py3-none-any.whl", "../six-1.17.0-py2.py3-none-any.whl"),
     r"member '\.\./six-1.17.0-py2.py3-none-any.whl' contains '\.\.' \(path traversal\)"),
    (_rename("six-1.17.0-py2.py3-none-any.whl", "/tmp/six.whl"),
     "member '/tmp/six.whl' has an absolute path"),
    (_rename("six-1.17.0-py2.py3-none-any.whl", "wheels/../../six.whl"), "path traversal"),
    (_extra(_link("wheels/x.whl", tarfile.SYMTYPE)),
     "member 'wheels/x.whl' is a symbolic link to '/etc/passwd'"),
    (_extra(_link("wheels/h.whl", tarfile.LNKTYPE, "pylock.toml")), "member 'wheels/h.whl' is a hard link"),
    (_extra(_link("wheels/dev.whl", tarfile.CHRTYPE)), "member 'wheels/dev.whl' is a character device"),
    (_extra(tarfile.TarInfo("wheels/extra.whl"), b"x"),
     "member 'wheels/extra.whl' is not listed in the manifest"),
    (lambda items: [i for i in items if not i[0].name.startswith("wheels/six")],
     r"1 member\(s\) listed in the manifest are missing from the file \(e\.g\. wheels/six"),
    (lambda items: [*items[1:], items[0]], "the first member is 'pylock.toml', not its manifest.json"),
    (_manifest_edit(lambda m: m.update(format_version=2)), "unsupported wheelhouse format version 2"),
    (_manifest_edit(lambda m: m.update(format="other")), "not a venvoy wheelhouse manifest"),
    (_manifest_edit(lambda m: m["environment"].pop("requirements")), "the environment has no requirements"),
    (_manifest_edit(_listed_evil), r"manifest.json lists an unknown member '\.\./evil'"),
    (lambda items: [[items[0][0], b"{not json"], *items[1:]], "manifest.json is not valid JSON"),
])
def test_damaged_wheelhouse(house: Path, tmp_path: Path, captured: dict[str, Any], edit: Any,
                            match: str) -> None:
    bad = rewrite(house, tmp_path / "bad.tar", edit)
    store = Store(tmp_path / "fresh")
    with pytest.raises(VenvoyError, match=match) as info:
        wheelhouse.import_wheelhouse(bad, store=store)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"wheelhouse {bad}: ")
    assert captured == {}  # nothing was built
    assert list(store.tmp.iterdir()) == []
    assert not (tmp_path / "evil").exists() and not Path("/tmp/six.whl").exists()


def test_not_a_wheelhouse(tmp_path: Path) -> None:
    (tmp_path / "x.tar").write_bytes(b"hello" * 200)
    with pytest.raises(VenvoyError, match=r"x\.tar is not a tar file"):
        wheelhouse.import_wheelhouse(tmp_path / "x.tar", store=Store(tmp_path / "s"))
    with pytest.raises(VenvoyError, match="does not exist"):
        wheelhouse.import_wheelhouse(tmp_path / "nope.tar", store=Store(tmp_path / "s"))


def test_env_arch_from_lock_wheels(env: Environment) -> None:
    assert common.env_arch(env) == "x86_64"
    assert common.wheel_arch("a-1-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl") \
        == "aarch64"
    assert common.wheel_arch("a-1-py3-none-any.whl") is None


def test_no_hidden_files_left(env: Environment, tmp_path: Path, fake_resolve: list[Any]) -> None:
    out = tmp_path / "o"
    out.mkdir()
    wheelhouse.export_wheelhouse(env, out)
    contexts.export_containerfile(env, out / "c")
    assert sorted(os.listdir(out)) == ["c", f"t-{env.lock_hash[:12]}.wheelhouse.tar"]


# --------------------------------------------------------------------------- hostile wheelhouses:
# the same bounded reader and limits as an archive (issue 8, item 4)


def _header(name: str, size: int, kind: bytes = b"0") -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def test_huge_pax_header_is_refused_with_bounded_memory(house: Path, tmp_path: Path) -> None:
    """A 1 MB file whose pax header claims 1 GiB: refused at the header, memory stays small."""
    import tracemalloc

    good = house.read_bytes()
    manifest_end = 512 + -(-int(good[124:136].rstrip(b"\0 "), 8) // 512) * 512
    pax = _header("././@PaxHeader", 1 << 30, b"x") + b"9" * (1 << 20)
    for data, where in ((good[:manifest_end] + pax, "second"), (pax, "first")):
        path = tmp_path / f"pax-{where}.tar"
        path.write_bytes(data)
        dest = tmp_path / f"dest-{where}"
        dest.mkdir()
        tracemalloc.start()
        try:
            with pytest.raises(VenvoyError, match=r"a pax header of 1073741824 bytes") as info:
                wheelhouse.read_wheelhouse(path, dest)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert "\n" not in str(info.value)
        assert peak < 16 << 20, f"{peak} bytes"
        assert list(dest.iterdir()) == []


@pytest.mark.parametrize("pax", [False, True])
def test_member_larger_than_its_manifest_says_is_never_written(
        house: Path, tmp_path: Path, pax: bool) -> None:
    """The header's size (or a pax size) is compared with the manifest's before a byte is
    written: a member claiming 5 MiB where the manifest says 10 bytes leaves no file."""
    big = b"\0" * (5 << 20)

    def edit(items: list[Any]) -> list[Any]:
        manifest = json.loads(items[0][1])
        for item in items:
            if item[0].name.startswith("wheels/six"):
                item[1] = big
                manifest["members"][item[0].name] = {"sha256": hashlib.sha256(b"x" * 10).hexdigest(),
                                                     "size": 10}
                if pax:
                    item[0].pax_headers = {"size": str(len(big))}
        items[0][1] = json.dumps(manifest).encode()
        return items

    bad = rewrite(house, tmp_path / "bad.tar", edit)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(VenvoyError, match=rf"holds {len(big)} bytes but the manifest says 10"):
        wheelhouse.read_wheelhouse(bad, dest)
    assert not any(p.name.startswith("six") for p in dest.rglob("*"))
    assert sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) < 1 << 20


def test_wheelhouse_limits_are_the_archives(house: Path, tmp_path: Path) -> None:
    """VENVOY_ARCHIVE_MAX_BYTES bounds a wheelhouse as it bounds an archive."""
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(VenvoyError, match="more than the limit") as info:
        wheelhouse.read_wheelhouse(house, dest, max_bytes=100)
    assert "VENVOY_ARCHIVE_MAX_BYTES" in info.value.hint
    assert list(dest.iterdir()) == []


class _Counting:
    """A loopback HTTP server that serves one file and counts every request."""

    def __init__(self, data: bytes) -> None:
        import http.server
        import threading

        outer = self
        self.hits = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_a: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class _StopBuild(Exception):
    """Raised where the real build would start a container: the wheels are fetched by then."""


@pytest.mark.parametrize("cached", ["absent", "truncated", "corrupt-same-size"])
def test_offline_import_makes_no_request_for_wheels_in_the_file(
        tmp_path: Path, fake_resolve: list[Any], monkeypatch: pytest.MonkeyPatch,
        cached: str) -> None:
    """A lock whose wheel URL is a loopback server: `import --offline` of a wheelhouse that
    holds the wheel runs the real init up to the build and the server sees no request;
    a damaged cache entry for that wheel is replaced from the wheelhouse, not downloaded."""
    from types import SimpleNamespace

    from venvoy.build.wheels import WheelCache

    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    data = b"six wheel bytes " * 64
    server = _Counting(data)
    try:
        name = "onlyhttp-1.0-py3-none-any.whl"
        url = f"http://127.0.0.1:{server.port}/{name}"
        text = ('lock-version = "1.0"\ncreated-by = "uv"\nrequires-python = ">=3.11"\n\n'
                '[[packages]]\nname = "onlyhttp"\nversion = "1.0"\n'
                f'wheels = [{{ url = "{url}", size = {len(data)}, '
                f'hashes = {{ sha256 = "{hashlib.sha256(data).hexdigest()}" }} }}]\n')
        store = Store(tmp_path / "home")
        record = make_env(tmp_path).record
        env = records.write_env(store, replace(record, lock_hash=locking.lock_hash(text),
                                               arch="x86_64"), text)
        house = wheelhouse.export_wheelhouse(env, tmp_path / "h.tar")
        assert server.hits == 1  # the export filled the exporter's cache
        server.hits = 0

        fresh = Store(tmp_path / "fresh")
        locked = locking.files_to_fetch(locking.parse(text))[0]
        entry = WheelCache(fresh.wheels).path_for(locked)
        if cached != "absent":
            entry.parent.mkdir(parents=True)
            entry.write_bytes(data[:10] if cached == "truncated" else b"X" * len(data))

        def stop(*_a: Any, **_kw: Any) -> None:
            raise _StopBuild

        monkeypatch.setattr(wheelhouse, "env_arch_here", lambda: "x86_64")
        monkeypatch.setattr("venvoy.runtime.detect.choose_runtime",
                            lambda *_a, **_kw: SimpleNamespace(runtime=SimpleNamespace(name="fake")))
        monkeypatch.setattr("venvoy.build.bases.resolve_base", lambda *_a, **_kw: SimpleNamespace(
            glibc="2.36", image_id="sha256:" + "cd" * 32, source="fake", archive=tmp_path / "b"))
        monkeypatch.setattr("venvoy.store.forms.ensure_native", stop)
        with pytest.raises(_StopBuild):
            wheelhouse.import_wheelhouse(house, store=fresh, offline=True)
        assert server.hits == 0
        assert entry.read_bytes() == data
    finally:
        server.close()


# --------------------------------------------------------------------------- damaged caches
# are never exported (issue 8, item 7)


def _corrupt_cached(env: Environment, filename: str) -> Path:
    from venvoy.build.wheels import WheelCache

    locked = next(f for f in locking.files_to_fetch(locking.parse(env.lock_text))
                  if f.filename == filename)
    cache = WheelCache(env.store.wheels)
    (path,) = cache.fetch([locked])
    path.write_bytes(b"Z" * path.stat().st_size)  # right size, wrong bytes
    return path


def test_export_wheelhouse_fetches_a_damaged_cached_wheel_again(
        env: Environment, tmp_path: Path, fake_resolve: list[Any]) -> None:
    cached = _corrupt_cached(env, "six-1.17.0-py2.py3-none-any.whl")
    house = wheelhouse.export_wheelhouse(env, tmp_path / "h.tar")
    assert members(house)["wheels/six-1.17.0-py2.py3-none-any.whl"] == b"six" * 50
    assert cached.read_bytes() == b"six" * 50  # the cache is repaired too


def test_export_refuses_a_damaged_cached_wheel_it_cannot_fetch_again(
        env: Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_other_lock(*_a: Any, **_kw: Any) -> str:
        raise locking.ResolveError("no aarch64 here", "x")

    monkeypatch.setattr(locking, "resolve", no_other_lock)
    _corrupt_cached(env, "six-1.17.0-py2.py3-none-any.whl")
    (tmp_path / "src" / "six-1.17.0-py2.py3-none-any.whl").write_bytes(b"S" * 150)  # index changed
    for export in (wheelhouse.export_wheelhouse, contexts.export_containerfile):
        with pytest.raises(VenvoyError, match="sha256") as info:
            export(env, tmp_path / "out")
        assert "\n" not in str(info.value) and "six-1.17.0-py2.py3-none-any.whl" in str(info.value)
        assert not (tmp_path / "out").exists()
