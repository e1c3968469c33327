"""venvoy.bases: where base images come from (mmdebstrap and the runtimes are faked here)."""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import tarfile
import threading
import time
from pathlib import Path

import pytest

from venvoy.build import bases
from venvoy.build.bases import BaseImage, resolve_base
from venvoy.core.errors import BadRequest, RuntimeFailed, VenvoyError
from venvoy.image import oci as image
from venvoy.runtime.apptainer import Apptainer
from venvoy.runtime.docker import Docker
from venvoy.runtime.oci_cli import OciCliRuntime
from venvoy.runtime.podman import Podman

from ._archives import layer_tar
from .conftest import FakeBin
from .test_image import base_archive, oci_base

LIBC_236 = "\x7fELF...GNU C Library (Debian GLIBC 2.36-9+deb12u4) stable release version 2.36.\n..."


def rootfs(python: str = "3.11", *, libc: str | None = LIBC_236, codename: str | None = "bookworm",
           extra: list[tuple[str, ...]] | None = None) -> bytes:
    """A tiny Debian-like root file system tar, names with ./ as mmdebstrap writes them."""
    entries: list[tuple[str, ...]] = [
        ("dir", "./"), ("dir", "./usr"), ("dir", "./usr/bin"), ("dir", "./usr/lib"),
        ("file", f"./usr/bin/python{python}", "ELF"), ("sym", "./usr/bin/python3", f"python{python}"),
        ("dir", "./usr/lib/x86_64-linux-gnu"), ("dir", "./etc"),
    ]
    if libc is not None:
        entries.append(("file", "./usr/lib/x86_64-linux-gnu/libc.so.6", libc))
    if codename is not None:
        entries.append(("file", "./usr/lib/os-release", f'ID=debian\nVERSION_CODENAME={codename}\n'))
    entries += extra or []
    return layer_tar(entries)


@pytest.fixture(autouse=True)
def no_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Belt and braces: nothing here may ever reach Docker Hub."""
    monkeypatch.setenv("VENVOY_BASE_REGISTRY", "localhost:1/library")
    monkeypatch.delenv("VENVOY_DEBIAN_MIRROR", raising=False)
    monkeypatch.delenv("VENVOY_REGISTRY_PROBE", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


class FakeDebootstrap:
    """An `mmdebstrap` on PATH that logs its argv and writes a prepared root file system tar."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bin = root / "fakebin"
        self.bin.mkdir(parents=True)
        self.log = root / "mmdebstrap.log"
        self.trees = root / "trees"
        self.trees.mkdir()
        for suite, py, libc in (("bookworm", "3.11", LIBC_236),
                                ("trixie", "3.13", LIBC_236.replace("2.36", "2.41"))):
            (self.trees / f"{suite}.tar").write_bytes(rootfs(py, libc=libc, codename=suite))
        script = self.bin / "mmdebstrap"
        script.write_text(f"""#!/bin/sh
echo "$@" >> '{self.log}'
[ -n "$FAKE_MMDEBSTRAP_SLEEP" ] && sleep "$FAKE_MMDEBSTRAP_SLEEP"
if [ -n "$FAKE_MMDEBSTRAP_FAIL" ]; then
  echo "I: running apt-get update..."; echo "E: apt-get update -oAPT::Status-Fd=<$$fd> failed" ; exit 1
fi
for last; do :; done
n=0; for a; do n=$((n+1)); done
i=0; for a; do i=$((i+1)); [ $i -eq $((n-2)) ] && suite=$a; [ $i -eq $((n-1)) ] && out=$a; done
cp '{self.trees}'/$suite.tar "$out"
""")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        monkeypatch.setenv("PATH", f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}")

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def mmdebstrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeDebootstrap:
    return FakeDebootstrap(tmp_path / "deb", monkeypatch)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


# -- versions and the offline bootstrap ----------------------------------------------

def test_unknown_python_lists_the_known_ones(store: Path) -> None:
    with pytest.raises(VenvoyError) as err:
        resolve_base("3.8", None, store=store, runtime=None, offline=True)
    assert "3.8" in str(err.value) and "3.9, 3.10, 3.11, 3.12, 3.13, 3.14" in str(err.value)


def test_offline_without_suite(store: Path, mmdebstrap: FakeDebootstrap) -> None:
    with pytest.raises(VenvoyError) as err:
        resolve_base("3.12", None, store=store, runtime=None, offline=True)
    assert str(err.value) == (
        "no offline base for Python 3.12: Debian bootstrap gives 3.11 (bookworm) or 3.13 (trixie); "
        "pass --base with a Python 3.12 image or tar, or go online")
    assert mmdebstrap.calls() == []


def test_offline_bootstrap_then_cached(store: Path, mmdebstrap: FakeDebootstrap,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VENVOY_DEBIAN_MIRROR", "http://mirror.example/debian")
    said: list[str] = []
    base = resolve_base("3.11", None, store=store, runtime=None, offline=True, progress=said.append)
    arch = bases.debian_architecture()
    assert base == BaseImage(store / "bases" / f"debian-bookworm-{arch}.tar", base.image_id, "3.11", "2.36",
                             "Debian bookworm bootstrap (mmdebstrap)")
    assert base.image_id == image.inspect_archive(base.archive).image_id
    assert stat.S_IMODE(base.archive.stat().st_mode) == 0o444
    (call,) = mmdebstrap.calls()
    assert "--variant=minbase" in call
    assert "--include=python3,python3-venv,python3-pip,ca-certificates" in call
    assert call.endswith("http://mirror.example/debian") and " bookworm " in call
    assert f"--architectures={arch}" in call
    assert any("mmdebstrap" in s for s in said)
    # the config is the usual one for a Debian root file system
    env = image.inspect_archive(base.archive).config["config"]["Env"]
    assert env == [f"PATH={image.DEFAULT_PATH}", "LANG=C.UTF-8"]
    # asked again: from the store, no mmdebstrap, nothing left behind
    again = resolve_base("3.11", None, store=store, runtime=None, offline=True)
    assert again == base
    assert len(mmdebstrap.calls()) == 1
    leftovers = [p.name for p in (store / "bases").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_bootstrap_trixie(store: Path, mmdebstrap: FakeDebootstrap) -> None:
    base = resolve_base("3.13", None, store=store, runtime=None, offline=True)
    assert (base.python, base.glibc) == ("3.13", "2.41")
    assert "trixie" in base.source


def test_bootstrap_unprivileged_uses_unshare(store: Path, mmdebstrap: FakeDebootstrap,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    resolve_base("3.11", None, store=store, runtime=None, offline=True)
    assert "--mode=unshare" in mmdebstrap.calls()[0]


def test_bootstrap_as_root_does_not_force_a_mode(store: Path, mmdebstrap: FakeDebootstrap,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    resolve_base("3.11", None, store=store, runtime=None, offline=True)
    assert "--mode" not in mmdebstrap.calls()[0]


def test_bootstrap_failure_is_one_line(store: Path, mmdebstrap: FakeDebootstrap,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MMDEBSTRAP_FAIL", "1")
    with pytest.raises(VenvoyError) as err:
        resolve_base("3.11", None, store=store, runtime=None, offline=True)
    text = str(err.value)
    assert "\n" not in text
    assert "mmdebstrap bookworm failed (exit 1): E: apt-get update" in text
    assert "VENVOY_DEBIAN_MIRROR" in text
    assert not list((store / "bases").glob("*.tar")) and not list((store / "bases").glob(".*"))


def test_bootstrap_without_mmdebstrap(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(store / "empty"))
    with pytest.raises(VenvoyError, match="mmdebstrap is not installed"):
        resolve_base("3.13", None, store=store, runtime=None, offline=True)


def test_concurrent_bootstraps_run_mmdebstrap_once(store: Path, mmdebstrap: FakeDebootstrap,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MMDEBSTRAP_SLEEP", "0.5")
    results: list[BaseImage] = []
    messages: list[str] = []

    def work() -> None:
        results.append(resolve_base("3.11", None, store=store, runtime=None, offline=True,
                                    progress=messages.append))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len(set(results)) == 1
    assert len(mmdebstrap.calls()) == 1
    assert any("waiting for another venvoy" in m for m in messages)


def test_cached_record_with_missing_archive_is_rebuilt(store: Path, mmdebstrap: FakeDebootstrap) -> None:
    base = resolve_base("3.11", None, store=store, runtime=None, offline=True)
    base.archive.unlink()
    again = resolve_base("3.11", None, store=store, runtime=None, offline=True)
    assert again.archive.is_file() and len(mmdebstrap.calls()) == 2


# -- online: the official image, with fallbacks --------------------------------------

def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def fake_runtime(fakebin: FakeBin, name: str, *, local: dict[str, Path] | None = None,
                 cls: type[OciCliRuntime] | None = None, save_error: str | None = None) -> OciCliRuntime:
    """A docker/podman script that knows the images in ``local`` (ref -> archive) and cannot pull."""
    local = local or {}
    lines = ['case "$1" in', "  image)", '    case "$5" in']
    for ref, archive in local.items():
        image_id = image.inspect_archive(archive).image_id
        lines.append(f"      '{ref}'|'{image_id.split(':')[1]}') echo {image_id} ;;")
    lines += ['      *) echo "Error: No such image: $5" >&2; exit 1 ;;', "    esac ;;",
              '  pull) echo "Error response from daemon: connection refused" >&2; exit 1 ;;',
              "  save)", '    for last; do :; done', '    case "$last" in']
    for archive in local.values():
        image_id = image.inspect_archive(archive).image_id
        lines.append(f"      '{image_id.split(':')[1]}') /bin/cp '{archive}' \"$3\" ;;")
    lines += ['      *) echo "Error: no such image $last" >&2; exit 1 ;;', "    esac ;;", "esac"]
    if save_error is not None:
        lines.insert(0, f'[ "$1" = save ] && {{ echo "{save_error}" >&2; exit 1; }}')
    path = fakebin.add(name, body="\n".join(lines) + "\n")
    cls = cls or (Docker if name == "docker" else Podman)
    return cls(str(path), fakebin.env())


def test_online_falls_back_to_bootstrap_when_registry_unreachable(
        store: Path, mmdebstrap: FakeDebootstrap, fakebin: FakeBin, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VENVOY_BASE_REGISTRY", f"localhost:{closed_port()}/library")
    rt = fake_runtime(fakebin, "podman")
    said: list[str] = []
    started = time.monotonic()
    base = resolve_base("3.11", None, store=store, runtime=rt, progress=said.append)
    assert time.monotonic() - started < 5
    assert base.source == "Debian bookworm bootstrap (mmdebstrap)"
    assert fakebin.calls("podman") == 1  # one `image inspect`; the probe said no, so no pull
    assert any("unreachable" in s and "falling back" in s for s in said)


def test_online_pull_failure_then_bootstrap(store: Path, mmdebstrap: FakeDebootstrap, fakebin: FakeBin,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VENVOY_REGISTRY_PROBE", "0")  # go straight to the (failing) pull
    rt = fake_runtime(fakebin, "docker")
    base = resolve_base("3.13", None, store=store, runtime=rt)
    assert base.python == "3.13"
    log = fakebin.log.read_text()
    assert "docker pull localhost:1/library/python:3.13-slim" in log


def test_online_3_12_everything_fails_in_one_line(store: Path, mmdebstrap: FakeDebootstrap,
                                                  fakebin: FakeBin, monkeypatch: pytest.MonkeyPatch) -> None:
    port = closed_port()
    monkeypatch.setenv("VENVOY_BASE_REGISTRY", f"localhost:{port}/library")
    rt = fake_runtime(fakebin, "docker")
    with pytest.raises(VenvoyError) as err:
        resolve_base("3.12", None, store=store, runtime=rt)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("no base image for Python 3.12: cannot pull "
                           f"localhost:{port}/library/python:3.12-slim")
    assert "3.11 (bookworm) or 3.13 (trixie)" in text and "--base" in text
    assert mmdebstrap.calls() == []


def test_online_without_docker_or_podman(store: Path, mmdebstrap: FakeDebootstrap) -> None:
    assert resolve_base("3.11", None, store=store, runtime=None).python == "3.11"
    with pytest.raises(VenvoyError) as err:
        resolve_base("3.12", None, store=store, runtime=None)
    assert "needs Docker or Podman (no runtime chosen)" in str(err.value)


def test_online_bootstrap_failure_lists_everything(store: Path, mmdebstrap: FakeDebootstrap,
                                                   fakebin: FakeBin, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MMDEBSTRAP_FAIL", "1")
    monkeypatch.setenv("VENVOY_BASE_REGISTRY", f"localhost:{closed_port()}/library")
    with pytest.raises(VenvoyError) as err:
        resolve_base("3.11", None, store=store, runtime=fake_runtime(fakebin, "podman"))
    text = str(err.value)
    assert "\n" not in text
    assert "cannot pull" in text and "mmdebstrap bookworm failed" in text
    assert "VENVOY_DEBIAN_MIRROR" in text


def test_official_image_found_locally_is_saved(store: Path, tmp_path: Path, fakebin: FakeBin,
                                               mmdebstrap: FakeDebootstrap) -> None:
    official = base_archive(tmp_path / "official.tar", [rootfs("3.12", codename="bookworm")],
                            env=["PATH=/usr/local/bin:/usr/bin:/bin", "PYTHON_VERSION=3.12.7"])
    rt = fake_runtime(fakebin, "docker", local={"localhost:1/library/python:3.12-slim": official})
    base = resolve_base("3.12", None, store=store, runtime=rt)
    assert (base.python, base.glibc, base.source) == ("3.12", "2.36", "localhost:1/library/python:3.12-slim")
    assert base.image_id == image.inspect_archive(official).image_id
    assert base.archive.parent == store / "bases" and base.archive.name.startswith("docker-")
    assert base.archive.read_bytes() == official.read_bytes()
    saves = fakebin.log.read_text().count("docker save")
    assert resolve_base("3.12", None, store=store, runtime=rt) == base
    assert fakebin.log.read_text().count("docker save") == saves  # from the store the second time
    assert mmdebstrap.calls() == []



# -- the runtime's image store is the adapter's: no runtime names in bases ------------

class Nerdctl(OciCliRuntime):
    """A Docker-compatible CLI bases.py has never heard of."""

    name = "nerdctl"
    binary = "nerdctl"


def test_any_runtime_with_an_image_store_gives_a_base(store: Path, tmp_path: Path, fakebin: FakeBin) -> None:
    image.rootfs_to_archive(_write(tmp_path / "r.tar", rootfs("3.11")), tmp_path / "img.tar")
    rt = fake_runtime(fakebin, "nerdctl", cls=Nerdctl, local={"localhost/mybase:1": tmp_path / "img.tar"})
    base = resolve_base("3.11", "localhost/mybase:1", store=store, runtime=rt)
    assert (base.python, base.source) == ("3.11", "localhost/mybase:1")
    assert base.archive.read_bytes() == (tmp_path / "img.tar").read_bytes()
    assert base.archive.name.startswith("nerdctl-")
    log = fakebin.log.read_text()
    assert "nerdctl image inspect --format {{.Id}} localhost/mybase:1" in log
    assert "nerdctl save -o" in log and "--format" not in log.split("save", 1)[1]


def test_runtime_without_an_image_store_is_refused_in_one_line(store: Path, fakebin: FakeBin) -> None:
    rt = Apptainer(str(fakebin.add("apptainer")), fakebin.env())
    assert not rt.has_image_store
    with pytest.raises(VenvoyError) as err:
        resolve_base("3.11", "python:3.11-slim", store=store, runtime=rt)
    assert "needs Docker or Podman to read it (apptainer is in use)" in str(err.value)
    assert fakebin.calls("apptainer") == 0
    with pytest.raises(BadRequest, match="looking up images by name is not supported by apptainer"):
        rt.image_id("x")
    with pytest.raises(BadRequest, match="pulling images is not supported by apptainer"):
        rt.pull("x")
    with pytest.raises(BadRequest, match="saving images to a Docker archive is not supported by apptainer"):
        rt.save("x", store / "x.tar")


@pytest.mark.parametrize("ref", ["-v", "--help", "a b", "x\ny", "x\x1b[2Jy:1", "x" * 2000])
def test_reference_that_looks_like_an_option_never_reaches_the_runtime(store: Path, fakebin: FakeBin,
                                                                       ref: str) -> None:
    rt = fake_runtime(fakebin, "docker")
    with pytest.raises(BadRequest, match="bad image name"):
        resolve_base("3.11", ref, store=store, runtime=rt)
    assert fakebin.calls("docker") == 0


def test_failed_save_is_one_bounded_line_and_leaves_nothing(store: Path, tmp_path: Path,
                                                             fakebin: FakeBin) -> None:
    image.rootfs_to_archive(_write(tmp_path / "r.tar", rootfs("3.11")), tmp_path / "img.tar")
    rt = fake_runtime(fakebin, "podman", local={"mine:1": tmp_path / "img.tar"},
                      save_error="first line\nError: no space left " + "x" * 5000)
    with pytest.raises(RuntimeFailed) as err:
        resolve_base("3.11", "mine:1", store=store, runtime=rt)
    text = str(err.value)
    assert "\n" not in text and len(text) < 600
    assert text.startswith("podman save ") and "Error: no space left" in text and "first line" not in text
    assert [p.name for p in (store / "bases").iterdir() if not p.name.endswith(".lock")] == []


def test_failed_pull_names_the_runtime_and_what_to_do(store: Path, fakebin: FakeBin,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VENVOY_REGISTRY_PROBE", "0")
    rt = fake_runtime(fakebin, "docker")
    with pytest.raises(RuntimeFailed) as err:
        resolve_base("3.11", "example.org/img:1", store=store, runtime=rt)
    assert str(err.value).startswith("docker pull example.org/img:1 failed: Error response from daemon")
    assert "--base" in str(err.value) and "VENVOY_PULL_TIMEOUT" in str(err.value)


@pytest.mark.parametrize("value", ["soon", "-1", "0", "nan", "inf"])
def test_bad_pull_timeout_is_one_line(store: Path, fakebin: FakeBin, monkeypatch: pytest.MonkeyPatch,
                                      value: str) -> None:
    monkeypatch.setenv("VENVOY_REGISTRY_PROBE", "0")
    monkeypatch.setenv("VENVOY_PULL_TIMEOUT", value)
    rt = fake_runtime(fakebin, "docker")
    with pytest.raises(VenvoyError, match=r"VENVOY_PULL_TIMEOUT=.* is not a number of seconds"):
        resolve_base("3.11", "example.org/img:1", store=store, runtime=rt)
    assert "docker pull" not in fakebin.log.read_text()


def test_image_id_refuses_what_is_not_an_image_id(fakebin: FakeBin) -> None:
    rt = Docker(str(fakebin.add("docker", body='echo "sha256:../../etc"\n')), fakebin.env())
    assert rt.image_id("x:1") is None
    good = "ab" * 32
    rt = Docker(str(fakebin.add("docker", body=f'echo "{good}"\n')), fakebin.env())
    assert rt.image_id("x:1") == f"sha256:{good}"


def test_host_architecture_comes_from_the_one_table(monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    from venvoy.build import lock

    monkeypatch.setattr(platform, "machine", lambda: "ppc64le")
    assert (bases.debian_architecture(), image.host_architecture(), lock.host_arch()) == (
        "ppc64el", "ppc64le", "ppc64le")
    monkeypatch.setattr(platform, "machine", lambda: "ARM64")
    assert (bases.debian_architecture(), image.host_architecture(), lock.host_arch()) == (
        "arm64", "arm64", "aarch64")
    assert lock.Platform(python="3.11", arch="AMD64").arch == "x86_64"  # any name, one row
    with pytest.raises(VenvoyError, match="unsupported architecture 'ppc64le'; use x86_64 or aarch64"):
        lock.Platform(python="3.11", arch="ppc64le")


# -- damaged or hostile inputs: one line, never a traceback, never outside bases/ -----

@pytest.mark.parametrize("manifest", [b"[1]", b"{}", b"[]", b'[{"Config": 5}]', b"not json"])
def test_base_tar_with_a_bad_manifest_is_one_line(store: Path, tmp_path: Path, manifest: bytes) -> None:
    bad = _write(tmp_path / "bad.tar", layer_tar([("file", "manifest.json", manifest.decode())]))
    with pytest.raises(VenvoyError) as err:
        resolve_base("3.11", str(bad), store=store, runtime=None)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)
    assert [p.name for p in (store / "bases").iterdir() if p.suffix != ".lock"] == []


def test_base_tar_with_a_huge_pax_header_is_refused(store: Path, tmp_path: Path) -> None:
    head = tarfile.TarInfo("././@PaxHeader")
    head.type, head.size = tarfile.XHDTYPE, 1 << 31  # claims 2 GiB of header
    data = head.tobuf(format=tarfile.USTAR_FORMAT) + bytes(1 << 16)
    bad = _write(tmp_path / "pax.tar", data)
    with pytest.raises(VenvoyError, match=r"base .* is not a readable tar: .*pax header of 2147483648 bytes"):
        resolve_base("3.11", str(bad), store=store, runtime=None)  # refused before reading 2 GiB


def test_two_image_archive_is_rewritten_with_the_hosts_image(store: Path, tmp_path: Path) -> None:
    """A plain docker-archive of two images is not copied as it is: the store keeps one image."""
    one = image.rootfs_to_archive(_write(tmp_path / "a.tar", rootfs("3.11")), tmp_path / "one.tar")
    with tarfile.open(tmp_path / "one.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    entry = json.loads(members["manifest.json"])[0]
    other = dict(json.loads(members[entry["Config"]]), architecture="s390x")
    other_bytes = json.dumps(other).encode()
    members["other.json"] = other_bytes
    members["manifest.json"] = json.dumps([dict(entry, Config="other.json"), entry]).encode()
    two = tmp_path / "two.tar"
    with tarfile.open(two, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    base = resolve_base("3.11", str(two), store=store, runtime=None)
    assert base.image_id == one.image_id
    with tarfile.open(base.archive) as tar:
        assert len(json.loads(tar.extractfile("manifest.json").read())) == 1  # type: ignore[union-attr]


@pytest.mark.parametrize("field,value", [("archive", "../outside.tar"), ("image_id", "sha256:../../etc"),
                                         ("python", "3.11\x1b[2J"), ("glibc", None), ("version", 99)])
def test_damaged_base_record_is_remade_not_followed(store: Path, mmdebstrap: FakeDebootstrap,
                                                    field: str, value: object) -> None:
    base = resolve_base("3.11", None, store=store, runtime=None, offline=True)
    record = base.archive.with_suffix(".json")
    data = json.loads(record.read_text())
    outside = store / "outside.tar"
    outside.write_bytes(base.archive.read_bytes())
    record.write_text(json.dumps(dict(data, **{field: value})))
    again = resolve_base("3.11", None, store=store, runtime=None, offline=True)
    assert again == base and again.archive.parent == store / "bases"
    assert len(mmdebstrap.calls()) == 2  # remade


def test_garbled_file_record_does_not_break_base_tars(store: Path, tmp_path: Path) -> None:
    src = base_archive(tmp_path / "b.tar", [rootfs("3.11")])
    base = resolve_base("3.11", str(src), store=store, runtime=None)
    base.archive.with_suffix(".json").write_text("[1]")
    (store / "bases" / "file-0.json").write_text('"just a string"')
    os.utime(src, ns=(1, 1))  # a new stamp: the records are read and updated again
    assert resolve_base("3.11", str(src), store=store, runtime=None) == base


@pytest.mark.parametrize("text", ["", "{", "[1]", "null", "\x00" * 70000])
def test_garbled_base_record_is_remade(store: Path, mmdebstrap: FakeDebootstrap, text: str) -> None:
    base = resolve_base("3.11", None, store=store, runtime=None, offline=True)
    base.archive.with_suffix(".json").write_text(text)
    assert resolve_base("3.11", None, store=store, runtime=None, offline=True) == base
    assert len(mmdebstrap.calls()) == 2


# -- the table of sources: adding one is one row -------------------------------------

def test_a_new_source_is_one_row(store: Path, tmp_path: Path, mmdebstrap: FakeDebootstrap,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    made = image.rootfs_to_archive(_write(tmp_path / "r.tar", rootfs("3.12")), tmp_path / "mine.tar")
    calls: list[str] = []

    def broken(python: str, bases_dir: Path, runtime: object, say: object) -> BaseImage:
        calls.append("broken")
        raise VenvoyError("the site mirror is down")

    def site(python: str, bases_dir: Path, runtime: object, say: object) -> BaseImage:
        calls.append("site")
        return bases.from_tar(tmp_path / "mine.tar", bases_dir)

    rows = (bases.BaseSource("a broken mirror", False, "fix the mirror", lambda p, r: None, broken),
            bases.BaseSource("the site's images", False, "ask the admins",
                             lambda p, r: None if p == "3.12" else "the site has 3.12 only", site),
            *bases.SOURCES)
    monkeypatch.setattr(bases, "SOURCES", rows)
    said: list[str] = []
    base = resolve_base("3.12", None, store=store, runtime=None, offline=True, progress=said.append)
    assert base.image_id == made.image_id and calls == ["broken", "site"]
    assert "the site mirror is down; falling back to the site's images" in said
    # 3.11: the site says why not, Debian gives it
    assert resolve_base("3.11", None, store=store, runtime=None, offline=True).python == "3.11"
    # 3.10: nobody has it; one line with every reason and every remedy
    with pytest.raises(VenvoyError) as err:
        resolve_base("3.10", None, store=store, runtime=None, offline=True)
    assert str(err.value) == (
        "no offline base for Python 3.10: the site mirror is down; the site has 3.12 only; "
        "Debian bootstrap gives 3.11 (bookworm) or 3.13 (trixie); "
        "pass --base with a Python 3.10 image or tar, fix the mirror, or go online")

# -- --base -------------------------------------------------------------------------

def test_base_reference_from_local_image(store: Path, tmp_path: Path, fakebin: FakeBin) -> None:
    archive = image.rootfs_to_archive(_write(tmp_path / "r.tar", rootfs("3.11")), tmp_path / "img.tar")
    assert archive.image_id
    rt = fake_runtime(fakebin, "podman", local={"localhost/mybase:1": tmp_path / "img.tar"})
    base = resolve_base("3.11", "localhost/mybase:1", store=store, runtime=rt)
    assert (base.python, base.glibc, base.source) == ("3.11", "2.36", "localhost/mybase:1")
    assert "podman save -o" in fakebin.log.read_text()
    assert "--format docker-archive" in fakebin.log.read_text()


def test_base_reference_python_mismatch(store: Path, tmp_path: Path, fakebin: FakeBin) -> None:
    image.rootfs_to_archive(_write(tmp_path / "r.tar", rootfs("3.13", codename="trixie")), tmp_path / "i.tar")
    rt = fake_runtime(fakebin, "docker", local={"mine:latest": tmp_path / "i.tar"})
    with pytest.raises(VenvoyError) as err:
        resolve_base("3.11", "mine:latest", store=store, runtime=rt)
    assert str(err.value) == ("base image mine:latest has Python 3.13, not 3.11; "
                              "use --python 3.13, or a base image with Python 3.11")


def test_base_reference_not_local_offline_does_not_pull(store: Path, fakebin: FakeBin) -> None:
    rt = fake_runtime(fakebin, "docker")
    with pytest.raises(VenvoyError, match="--offline forbids pulling"):
        resolve_base("3.11", "other/img:1", store=store, runtime=rt, offline=True)
    assert "docker pull" not in fakebin.log.read_text()


def test_base_reference_unreachable_registry_is_fast(store: Path, fakebin: FakeBin) -> None:
    port = closed_port()
    rt = fake_runtime(fakebin, "docker")
    started = time.monotonic()
    with pytest.raises(VenvoyError) as err:
        resolve_base("3.11", f"localhost:{port}/python:3.11-slim", store=store, runtime=rt)
    assert time.monotonic() - started < 3
    assert f"registry localhost:{port} unreachable" in str(err.value)
    assert "docker pull" not in fakebin.log.read_text()  # the probe answered first


def test_base_reference_needs_docker_or_podman(store: Path) -> None:
    with pytest.raises(VenvoyError) as err:
        resolve_base("3.11", "python:3.11-slim", store=store, runtime=None)
    assert "needs Docker or Podman" in str(err.value) and "docker save -o base.tar" in str(err.value)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_base_tar_docker_archive_copied_by_content(store: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    src = base_archive(tmp_path / "b.tar", [rootfs("3.11")])
    base = resolve_base("3.11", str(src), store=store, runtime=None)
    assert base.archive.read_bytes() == src.read_bytes()
    assert base.archive.name.startswith("file-") and base.source == str(src)
    assert base.image_id == image.inspect_archive(src).image_id
    # the same file again: recognised by path, size and mtime, not read again
    monkeypatch.setattr(bases, "sha256_file", lambda _p: pytest.fail("read again"))
    assert resolve_base("3.11", str(src), store=store, runtime=None) == base


def test_base_tar_same_content_elsewhere_is_shared(store: Path, tmp_path: Path) -> None:
    a = base_archive(tmp_path / "a.tar", [rootfs("3.11")])
    b = tmp_path / "copy" / "b.tar"
    b.parent.mkdir()
    b.write_bytes(a.read_bytes())
    first = resolve_base("3.11", str(a), store=store, runtime=None)
    second = resolve_base("3.11", str(b), store=store, runtime=None)
    assert first.archive == second.archive
    assert len(list((store / "bases").glob("*.tar"))) == 1


def test_base_tar_rootfs_is_wrapped(store: Path, tmp_path: Path) -> None:
    src = _write(tmp_path / "rootfs.tar", rootfs("3.13", libc=None, codename="trixie"))
    base = resolve_base("3.13", str(src), store=store, runtime=None)
    assert (base.python, base.glibc) == ("3.13", "2.41")  # from the codename
    info = image.inspect_archive(base.archive)
    assert info.diff_ids == (image_sha(src),)


def image_sha(path: Path) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_base_tar_oci_is_converted(store: Path, tmp_path: Path) -> None:
    src = oci_base(tmp_path / "oci.tar", [rootfs("3.11")])
    base = resolve_base("3.11", str(src), store=store, runtime=None)
    assert base.image_id == image.inspect_archive(src).image_id
    with tarfile.open(base.archive) as tar:
        assert "manifest.json" in tar.getnames()


def test_base_tar_errors(store: Path, tmp_path: Path) -> None:
    with pytest.raises(VenvoyError, match="no such file"):
        resolve_base("3.11", str(tmp_path / "missing.tar"), store=store, runtime=None)
    junk = _write(tmp_path / "junk.tar", layer_tar([("file", "README", "hi")]))
    with pytest.raises(VenvoyError, match="neither an image archive nor a root file system"):
        resolve_base("3.11", str(junk), store=store, runtime=None)
    text = _write(tmp_path / "text.tar", b"not a tar at all")
    with pytest.raises(VenvoyError, match="not a readable tar"):
        resolve_base("3.11", str(text), store=store, runtime=None)


# -- detecting Python and glibc ----------------------------------------------------

def detect(tmp_path: Path, data: bytes, env: list[str] | None = None) -> tuple[str, str]:
    archive = base_archive(tmp_path / "d.tar", [data], env=env)
    return bases.detect_python_glibc(archive)


def test_detect_from_python_version_env(tmp_path: Path) -> None:
    data = rootfs("3.11")  # the files say 3.11, but PYTHON_VERSION (official images) wins
    assert detect(tmp_path, data, env=["PYTHON_VERSION=3.12.7"]) == ("3.12", "2.36")


def test_detect_old_glibc_from_file_names(tmp_path: Path) -> None:
    data = layer_tar([("file", "usr/local/bin/python3.9", "x"), ("sym", "usr/local/bin/python3", "python3.9"),
                      ("file", "lib/x86_64-linux-gnu/libc-2.31.so", "x"),
                      ("sym", "lib/x86_64-linux-gnu/libc.so.6", "libc-2.31.so")])
    assert detect(tmp_path, data) == ("3.9", "2.31")


def test_detect_prefers_the_python3_link(tmp_path: Path) -> None:
    data = layer_tar([("file", "usr/bin/python3.11", "x"), ("file", "usr/bin/python3.12", "x"),
                      ("sym", "usr/bin/python3", "python3.11"), ("file", "etc/os-release",
                                                                  "VERSION_CODENAME=jammy\n")])
    assert detect(tmp_path, data) == ("3.11", "2.35")


def test_detect_musl_and_missing(tmp_path: Path) -> None:
    musl = layer_tar([("file", "usr/local/bin/python3.12", "x"), ("file", "lib/ld-musl-x86_64.so.1", "x")])
    with pytest.raises(VenvoyError, match="musl"):
        detect(tmp_path, musl)
    no_python = layer_tar([("file", "usr/lib/x86_64-linux-gnu/libc.so.6", LIBC_236)])
    with pytest.raises(VenvoyError, match="has no Python 3"):
        detect(tmp_path, no_python)
    unknown = layer_tar([("file", "usr/bin/python3.11", "x")])
    with pytest.raises(VenvoyError, match="cannot tell the glibc version"):
        detect(tmp_path, unknown)


def test_detect_across_layers_of_an_oci_archive(tmp_path: Path) -> None:
    lower = layer_tar([("file", "usr/lib/x86_64-linux-gnu/libc.so.6", LIBC_236)])
    upper = layer_tar([("file", "usr/local/bin/python3.14", "x")])
    archive = oci_base(tmp_path / "o.tar", [lower, upper])
    assert bases.detect_python_glibc(archive) == ("3.14", "2.36")


# -- registries ------------------------------------------------------------------------

@pytest.mark.parametrize(("ref", "endpoint"), [
    ("python:3.11-slim", ("registry-1.docker.io", 443)),
    ("docker.io/library/python:3.11-slim", ("registry-1.docker.io", 443)),
    ("library/python", ("registry-1.docker.io", 443)),
    ("ghcr.io/org/img:1", ("ghcr.io", 443)),
    ("localhost:5999/python:3.11-slim", ("localhost", 5999)),
    ("[::1]:5000/x", ("::1", 5000)),
    ("localhost/venvoy/x:1", None),
])
def test_registry_endpoint(ref: str, endpoint: tuple[str, int] | None) -> None:
    assert bases.registry_endpoint(ref) == endpoint


def test_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    port = closed_port()
    problem = bases.probe_registry(f"localhost:{port}/x", {})
    assert problem is not None and "unreachable" in problem
    assert bases.probe_registry(f"localhost:{port}/x", {"HTTPS_PROXY": "http://proxy:3128"}) is None
    monkeypatch.setenv("VENVOY_REGISTRY_PROBE", "0")
    assert bases.probe_registry(f"localhost:{port}/x", {}) is None
    monkeypatch.delenv("VENVOY_REGISTRY_PROBE")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert bases.probe_registry(f"127.0.0.1:{server.getsockname()[1]}/x", {}) is None


def test_official_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VENVOY_BASE_REGISTRY")
    assert bases.official_reference("3.12") == "docker.io/library/python:3.12-slim"
    monkeypatch.setenv("VENVOY_BASE_REGISTRY", "mirror.gcr.io/library/")
    assert bases.official_reference("3.12") == "mirror.gcr.io/library/python:3.12-slim"


def test_store_record_is_json(store: Path, mmdebstrap: FakeDebootstrap) -> None:
    base = resolve_base("3.11", None, store=store, runtime=None, offline=True)
    record = json.loads(base.archive.with_suffix(".json").read_text())
    assert record["image_id"] == base.image_id and record["suite"] == "bookworm"
