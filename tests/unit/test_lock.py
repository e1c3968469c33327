"""Locks: the target platform, reading pylock.toml, uv's errors, and resolving offline."""

# uv's reports below are quoted verbatim, long lines and all.
# ruff: noqa: E501

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from venvoy.build import lock
from venvoy.build.lock import (
    LockedFile,
    LockedPackage,
    Platform,
    ResolveError,
    files_to_fetch,
    lock_hash,
    parse,
    requirements_txt,
    resolve,
)
from venvoy.core.errors import BadRequest, VenvoyError

H = {c: c * 64 for c in "abcdef"}
PYPI = "https://files.pythonhosted.org/packages/00/11"

#: What `uv pip compile --format pylock.toml --generate-hashes --python-platform x86_64-manylinux_2_36`
#: writes (uv 0.13), shortened: sdist and wheels, several wheels, a marker, an sdist-only package.
SAMPLE = f"""\
lock-version = "1.0"
created-by = "uv"
requires-python = ">=3.11"

[[packages]]
name = "charset-normalizer"
version = "3.5.2"
marker = "python_full_version >= '3.8'"
sdist = {{ url = "{PYPI}/charset_normalizer-3.5.2.tar.gz", upload-time = 2026-09-30T04:39:23Z, size = 172659, hashes = {{ sha256 = "{H['a']}" }} }}
wheels = [
    {{ url = "{PYPI}/charset_normalizer-3.5.2-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl", upload-time = 2026-09-30T04:39:00Z, size = 150000, hashes = {{ sha256 = "{H['b']}" }} }},
    {{ url = "{PYPI}/charset_normalizer-3.5.2-py3-none-any.whl", upload-time = 2026-09-30T04:39:21Z, size = 68872, hashes = {{ sha256 = "{H['c']}" }} }},
]

[[packages]]
name = "docopt"
version = "0.6.2"
sdist = {{ url = "{PYPI}/docopt-0.6.2.tar.gz", upload-time = 2014-06-16T11:18:57Z, size = 25901, hashes = {{ sha256 = "{H['d']}" }} }}

[[packages]]
name = "six"
version = "1.17.0"
wheels = [{{ url = "file:///srv/wheels/six-1.17.0-py2.py3-none-any.whl", hashes = {{ sha256 = "{H['e'].upper()}" }} }}]
"""


# --------------------------------------------------------------------------- Platform


@pytest.mark.parametrize(("arch", "glibc", "expected"), [
    ("x86_64", "2.36", "x86_64-manylinux_2_36"),   # Debian 12
    ("x86_64", "2.41", "x86_64-manylinux_2_40"),   # Debian 13: newer than uv knows, clamped down
    ("aarch64", "2.39", "aarch64-manylinux_2_39"),  # Ubuntu 24.04
    ("x86_64", "2.30", "x86_64-manylinux_2_28"),   # between the values uv accepts: round down
    ("aarch64", "2.17", "aarch64-manylinux_2_17"),
    ("x86_64", "2.27", "x86_64-manylinux_2_17"),
    ("amd64", "2.36", "x86_64-manylinux_2_36"),
    ("arm64", "2.36", "aarch64-manylinux_2_36"),
])
def test_uv_platform(arch: str, glibc: str, expected: str) -> None:
    assert Platform("3.11", arch, glibc).uv_platform() == expected


def test_platform_defaults_and_aliases() -> None:
    assert Platform("3.12") == Platform("3.12", "x86_64", "2.36")
    assert Platform("3.12", "amd64") == Platform("3.12", "x86_64")
    assert Platform("3.12", "arm64").arch == "aarch64"


@pytest.mark.parametrize("kwargs", [
    {"python": "3"}, {"python": "python3.11"}, {"python": "2.7"},
    {"python": "3.11", "arch": "ppc64le"}, {"python": "3.11", "glibc": "2.x"},
    {"python": "3.11", "glibc": "musl"},
])
def test_bad_platform(kwargs: dict[str, str]) -> None:
    with pytest.raises(VenvoyError):
        Platform(**kwargs)


def test_glibc_too_old_for_manylinux() -> None:
    with pytest.raises(VenvoyError, match="too old"):
        Platform("3.11", glibc="2.12").uv_platform()


# --------------------------------------------------------------------------- parse


def test_parse_wheels_sdist_markers() -> None:
    pkgs = parse(SAMPLE)
    assert [(p.name, p.version) for p in pkgs] == [
        ("charset-normalizer", "3.5.2"), ("docopt", "0.6.2"), ("six", "1.17.0")]
    cn, docopt, six = pkgs
    assert cn.marker == "python_full_version >= '3.8'"
    assert [w.filename for w in cn.wheels] == [
        "charset_normalizer-3.5.2-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64"
        ".manylinux_2_28_x86_64.whl",
        "charset_normalizer-3.5.2-py3-none-any.whl"]
    assert cn.wheels[1] == LockedFile(f"{PYPI}/charset_normalizer-3.5.2-py3-none-any.whl",
                                      "charset_normalizer-3.5.2-py3-none-any.whl", H["c"], 68872)
    assert cn.sdist == LockedFile(f"{PYPI}/charset_normalizer-3.5.2.tar.gz",
                                  "charset_normalizer-3.5.2.tar.gz", H["a"], 172659)
    assert docopt.wheels == () and docopt.sdist is not None and docopt.marker is None
    assert docopt.sdist.filename == "docopt-0.6.2.tar.gz"
    # a find-links file: file:// URL, no size; hashes are normalised to lower case
    assert six.wheels == (LockedFile("file:///srv/wheels/six-1.17.0-py2.py3-none-any.whl",
                                     "six-1.17.0-py2.py3-none-any.whl", H["e"], None),)
    assert six.sdist is None


def test_parse_empty_lock() -> None:
    assert parse('lock-version = "1.0"\ncreated-by = "uv"\nrequires-python = ">=3.11"\npackages = []\n') == []
    assert parse('lock-version = "1.0"\n') == []


def test_parse_archive_name_and_path() -> None:
    text = f"""lock-version = "1.0"
[[packages]]
name = "six"
version = "1.17.0"
archive = {{ url = "{PYPI}/six-1.17.0-py2.py3-none-any.whl", hashes = {{ sha256 = "{H['a']}" }} }}
[[packages]]
name = "foo"
version = "1.0"
archive = {{ url = "https://example.org/dl/foo-1.0.tar.gz?x=1", hashes = {{ sha256 = "{H['b']}" }} }}
[[packages]]
name = "bar"
version = "2.0"
wheels = [{{ name = "bar-2.0-py3-none-any.whl", path = "wheels/bar.whl", hashes = {{ sha256 = "{H['c']}" }} }}]
[[packages]]
name = "baz"
version = "3.0"
wheels = [{{ url = "https://example.org/a%20b/baz-3.0-py3-none-any.whl", hashes = {{ sha256 = "{H['d']}" }} }}]
"""
    six, foo, bar, baz = parse(text)
    assert six.wheels[0].filename == "six-1.17.0-py2.py3-none-any.whl" and six.sdist is None
    assert foo.wheels == () and foo.sdist is not None and foo.sdist.filename == "foo-1.0.tar.gz"
    assert bar.wheels[0] == LockedFile("wheels/bar.whl", "bar-2.0-py3-none-any.whl", H["c"], None)
    assert baz.wheels[0].filename == "baz-3.0-py3-none-any.whl"


@pytest.mark.parametrize(("text", "match"), [
    ("lock-version = ", "not valid TOML"),
    ('lock-version = "2.0"\n', "lock-version"),
    ("packages = []\n", "lock-version"),
    ('lock-version = "1.0"\npackages = 3\n', "malformed"),
    ('lock-version = "1.0"\n[[packages]]\nversion = "1"\n', "no name"),
    ('lock-version = "1.0"\n[[packages]]\nname = "a"\nsdist = { url = "https://x/a-1.tar.gz" }\n', "version"),
    ('lock-version = "1.0"\n[[packages]]\nname = "a"\nversion = "1"\n', "neither a wheel nor an sdist"),
    ('lock-version = "1.0"\n[[packages]]\nname = "a"\nversion = "1"\n'
     'sdist = { url = "https://x/a-1.tar.gz", hashes = { md5 = "00" } }\n', "no sha256"),
    ('lock-version = "1.0"\n[[packages]]\nname = "a"\nversion = "1"\n'
     'sdist = { url = "https://x/a-1.tar.gz", hashes = { sha256 = "abc" } }\n', "no sha256"),
    ('lock-version = "1.0"\n[[packages]]\nname = "a"\nversion = "1"\n'
     f'sdist = {{ url = "https://x/", hashes = {{ sha256 = "{H["a"]}" }} }}\n', "bad file name"),
    ('lock-version = "1.0"\n[[packages]]\nname = "a"\nversion = "1"\n'
     f'sdist = {{ url = "https://x/a.tgz", size = -1, hashes = {{ sha256 = "{H["a"]}" }} }}\n', "bad size"),
    ('lock-version = "1.0"\n[[packages]]\nname = "a"\nversion = "1"\nwheels = "x"\n', "not an array"),
    ('lock-version = "1.0"\n[[packages]]\nname = "a"\n'
     'vcs = { type = "git", url = "https://g/x", commit-id = "0" }\n', "VCS repository"),
    ('lock-version = "1.0"\n[[packages]]\nname = "a"\ndirectory = { path = "." }\n', "local directory"),
])
def test_parse_rejects(text: str, match: str) -> None:
    with pytest.raises(VenvoyError, match=match) as info:
        parse(text)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- derived data


def test_requirements_txt() -> None:
    text = requirements_txt(parse(SAMPLE))
    assert text.splitlines() == [
        f"charset-normalizer==3.5.2 ; python_full_version >= '3.8' --hash=sha256:{H['b']} "
        f"--hash=sha256:{H['c']} --hash=sha256:{H['a']}",
        f"docopt==0.6.2 --hash=sha256:{H['d']}",
        f"six==1.17.0 --hash=sha256:{H['e']}",
    ]
    assert text.endswith("\n")
    assert requirements_txt([]) == ""


def test_requirements_txt_deduplicates_hashes() -> None:
    f = LockedFile("https://x/a-1-py3-none-any.whl", "a-1-py3-none-any.whl", H["a"], None)
    assert requirements_txt([LockedPackage("a", "1", (f, f), None)]) == f"a==1 --hash=sha256:{H['a']}\n"


def test_files_to_fetch() -> None:
    files = files_to_fetch(parse(SAMPLE))
    assert [f.filename for f in files] == [
        "charset_normalizer-3.5.2-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64"
        ".manylinux_2_28_x86_64.whl",
        "charset_normalizer-3.5.2-py3-none-any.whl",
        "docopt-0.6.2.tar.gz",  # only because docopt has no wheel
        "six-1.17.0-py2.py3-none-any.whl",
    ]


def test_lock_hash_ignores_line_endings() -> None:
    digest = lock_hash(SAMPLE)
    assert digest == hashlib.sha256(SAMPLE.encode()).hexdigest()
    assert lock_hash(SAMPLE.replace("\n", "\r\n")) == digest
    assert lock_hash(SAMPLE.rstrip("\n")) == digest
    assert lock_hash(SAMPLE.replace("1.17.0", "1.16.0")) != digest
    assert len(digest) == 64


# --------------------------------------------------------------------------- uv


def test_uv_binary_found() -> None:
    path = lock.uv_binary()
    assert os.access(path, os.X_OK)


def test_uv_binary_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_module(name: str) -> object:
        raise ImportError(name)

    monkeypatch.setattr("importlib.import_module", no_module)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(VenvoyError) as info:
        lock.uv_binary()
    assert str(info.value) == "uv not found; pip install uv"


def test_ca_bundle_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pem", tmp_path / "b.pem"
    a.write_text("a")
    b.write_text("b")
    assert lock.ca_bundle({"SSL_CERT_FILE": str(a), "REQUESTS_CA_BUNDLE": str(b)}) == str(a)
    assert lock.ca_bundle({"SSL_CERT_FILE": str(tmp_path / "none"), "PIP_CERT": str(b)}) == str(b)
    system = lock.SYSTEM_CA_BUNDLE if os.path.isfile(lock.SYSTEM_CA_BUNDLE) else None
    assert lock.ca_bundle({}) == system


#: uv 0.13's reports (stderr) for failures, and the one line venvoy makes of each.
UV_ERRORS = [
    ("""error: No solution found when resolving dependencies
  cause: Because nonexistent-pkg-xyz was not found in the package registry and you require nonexistent-pkg-xyz, we can conclude that your requirements are unsatisfiable.
""", "cannot resolve requirements: no package named 'nonexistent-pkg-xyz' on the index; check the name"),
    ("""error: No solution found when resolving dependencies
  cause: Because there is no version of six==99 and you require six==99, we can conclude that your requirements are unsatisfiable.
""", "cannot resolve requirements: no version six==99 on the index; check the version specifier"),
    ("""error: No solution found when resolving dependencies
  cause: Because requests==2.31.0 depends on urllib3>=1.21.1,<3 and you require requests==2.31, we can conclude that you require urllib3>=1.21.1,<3.
         And because you require urllib3==1.0, we can conclude that your requirements are unsatisfiable.
""", "cannot resolve requirements: the requirements conflict: Because requests==2.31.0 depends on "
     "urllib3>=1.21.1,<3 and you require requests==2.31, we can conclude that you require "
     "urllib3>=1.21.1,<3. And because you require urllib3==1.0, we can conclude that your requirements "
     "are unsatisfiable.; loosen the conflicting version constraints"),
    ("""error: No solution found when resolving dependencies
  cause: Because the requested Python version (>=3.10) does not satisfy Python>=3.11 and all of:
             numpy>=2.3.0,<=2.4.0rc1
             numpy>=2.4.1,<=2.4.6
         depend on Python>=3.11, we can conclude that all of:
             numpy>=2.3.0,<=2.4.0rc1
          cannot be used.
         And because numpy==2.4.0 was yanked (reason: Backward compatibility bug) and you require numpy>=2.3, we can conclude that your requirements are unsatisfiable.

hint: The `--python-version` value (>=3.10) includes Python versions that are not supported by your dependencies (e.g., all of:
    numpy>=2.3.0,<=2.4.0rc1
 only support >=3.11). Consider using a higher `--python-version` value.
""", "cannot resolve requirements: numpy needs Python>=3.11 in the versions allowed, but the environment "
     "has Python 3.10; choose another Python version or allow other versions of the package"),
    ("""error: Couldn't parse requirement in `requirements.in` at position 0
  cause: no such comparison operator ">>=", must be one of ~= == != <= >= < > ===
         six>>=1
            ^^^^
""", "cannot resolve requirements: invalid requirement 'six>>=1': no such comparison operator \">>=\", "
     "must be one of ~= == != <= >= < > ===; fix the requirement"),
    ("""error: Request failed after 3 retries in 9.6s
  cause: Failed to fetch: https://pypi.org/simple/attrs/
  cause: error sending request for url (https://pypi.org/simple/attrs/)
  cause: client error (Connect)
  cause: tunnel error: failed to create underlying connection
  cause: tcp connect error
  cause: Connection refused (os error 111)
""", "cannot resolve requirements: cannot reach the package index at https://pypi.org/simple/attrs/ "
     "(Connection refused (os error 111)); check the network connection and proxy settings "
     "(HTTPS_PROXY, NO_PROXY)"),
    ("""error: Failed to fetch: https://pypi.org/simple/attrs/
  cause: error sending request for url (https://pypi.org/simple/attrs/)
  cause: client error (Connect)
  cause: invalid peer certificate: UnknownIssuer

hint: Consider enabling use of system TLS certificates with the `--system-certs` command-line flag
""", "cannot resolve requirements: cannot reach the package index at https://pypi.org/simple/attrs/ "
     "(invalid peer certificate: UnknownIssuer); set SSL_CERT_FILE to the CA bundle that signed the "
     "index's certificate (e.g. a proxy's CA in /etc/ssl/certs/ca-certificates.crt)"),
    ("""error: Failed to fetch: https://example.org/simple/six/
  cause: HTTP status client error (401 Unauthorized) for url (https://example.org/simple/six/)
""", "cannot resolve requirements: the package index answered 401 Unauthorized at "
     "https://example.org/simple/six/; check the index URL and its credentials"),
    ("""   Updating https://github.com/x/y (HEAD)
error: Git operation failed
  cause: failed to clone into: /root/.cache/uv/git-v2/db/36c1e61c0b17d7ac
  cause: process didn't exit successfully: `/usr/bin/git fetch --force 'https://github.com/x/y'` (exit status: 128)
         --- stderr
         fatal: unable to access 'https://github.com/x/y/': Could not resolve host: github.com
""", "cannot resolve requirements: git failed: fatal: unable to access 'https://github.com/x/y/': "
     "Could not resolve host: github.com; check the network connection and proxy settings "
     "(HTTPS_PROXY, NO_PROXY)"),
    ("""error: Failed to build `broken==1.0`
  cause: The build backend returned an error
  cause: Call to `setuptools.build_meta:__legacy__.get_requires_for_build_wheel` failed (exit status: 1)

         [stderr]
         boom: this sdist cannot build

hint: Build failures usually indicate a problem with the package or the build environment
""", "cannot resolve requirements: broken==1.0 has no wheel for this platform and its source "
     "distribution failed to build (boom: this sdist cannot build); require a version that has wheels "
     "for this Python and platform"),
    ("""error: something new
  cause: first
  cause: the real reason
""", "cannot resolve requirements: something new: the real reason; see uv's output for details"),
    ("", "cannot resolve requirements: uv failed; see uv's output for details"),
]


@pytest.mark.parametrize(("stderr", "expected"), UV_ERRORS)
def test_uv_error_becomes_one_line(stderr: str, expected: str) -> None:
    err = lock._resolve_error(stderr, Platform("3.10" if "3.10" in stderr else "3.11"))
    assert str(err) == expected
    assert "\n" not in str(err)
    assert err.details == stderr.strip()


def test_long_uv_error_is_cut() -> None:
    stderr = "error: No solution found\n  cause: " + "Because a depends on b " * 100 + "\n"
    err = lock._resolve_error(stderr, Platform("3.11"))
    assert len(err.message) <= 300 and err.message.endswith("…")


@pytest.mark.parametrize("line", ["-r other.txt", "--requirement=x.txt", "-rother.txt", "  -c c.txt",
                                  "--index-url http://127.0.0.1:9/simple", "-e .",
                                  "six --extra-index-url=http://x/", "six --config-settings a=b",
                                  "--find-links /tmp", "six --hash=md5:abc"])
def test_options_are_refused(line: str) -> None:
    """The same check as `init -r` and every record read: no option but a sha256 pin."""
    with pytest.raises(BadRequest, match=r"^requirements:2: ") as info:
        resolve(f"six\n{line}\n", Platform("3.11"))
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- resolving (offline, with uv)


def make_wheel(directory: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A minimal pure-Python wheel that uv can read metadata from."""
    path = directory / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}/__init__.py", "")
        zf.writestr(f"{info}/METADATA", metadata)
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def local_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """uv resolves from a directory of wheels only (no network), with its own cache."""
    links = tmp_path / "links"
    links.mkdir()
    make_wheel(links, "alpha", "1.0")
    make_wheel(links, "alpha", "2.0")
    make_wheel(links, "beta", "1.0", ("alpha>=1",))
    for var in list(os.environ):
        if var.startswith("UV_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("UV_NO_INDEX", "1")
    monkeypatch.setenv("UV_FIND_LINKS", str(links))
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    return links


def versions(text: str) -> dict[str, str]:
    return {p.name: p.version for p in parse(text)}


def test_resolve_offline(local_index: Path) -> None:
    text = resolve("# a comment\nbeta  # trailing comment\n", Platform("3.11"))
    assert versions(text) == {"alpha": "2.0", "beta": "1.0"}
    assert "venvoy-lock-" not in text and "requirements.in" not in text  # nothing of the temp dir
    assert resolve("beta", Platform("3.11")) == text  # deterministic, trailing newline or not
    (alpha,) = [p for p in parse(text) if p.name == "alpha"]
    wheel = local_index / "alpha-2.0-py3-none-any.whl"
    assert alpha.wheels[0].sha256 == hashlib.sha256(wheel.read_bytes()).hexdigest()


def test_resolve_keeps_previous_pins(local_index: Path) -> None:
    old = resolve("alpha==1.0\nbeta\n", Platform("3.11"))
    assert versions(old) == {"alpha": "1.0", "beta": "1.0"}
    kept = resolve("beta\n", Platform("3.11"), previous=old)
    assert versions(kept) == {"alpha": "1.0", "beta": "1.0"}
    assert resolve("beta\n", Platform("3.11"), previous=old.replace("\n", "\r\n")) == kept
    assert versions(resolve("beta\n", Platform("3.11"), previous=old, upgrade=True))["alpha"] == "2.0"
    # a pin that is no longer allowed gives way
    assert versions(resolve("alpha>=2\n", Platform("3.11"), previous=old))["alpha"] == "2.0"


def test_resolve_bad_previous(local_index: Path) -> None:
    with pytest.raises(VenvoyError, match="previous lock is not valid TOML"):
        resolve("beta\n", Platform("3.11"), previous="lock-version = ")


def test_resolve_unknown_package(local_index: Path) -> None:
    with pytest.raises(ResolveError) as info:
        resolve("nonexistent-pkg-xyz\n", Platform("3.11"))
    assert str(info.value) == ("cannot resolve requirements: no package named 'nonexistent-pkg-xyz' "
                               "on the index; check the name")
    assert "nonexistent-pkg-xyz" in info.value.details


def test_resolve_passes_ca_bundle_and_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """uv gets SSL_CERT_FILE from REQUESTS_CA_BUNDLE and the index from PIP_INDEX_URL."""
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    fake = tmp_path / "uv"
    log = tmp_path / "log"
    fake.write_text(f"""#!/bin/sh
echo "$SSL_CERT_FILE $*" > '{log}'
printf 'lock-version = "1.0"\\r\\npackages = []\\r\\n' > pylock.toml
""")
    fake.chmod(0o755)
    monkeypatch.setattr(lock, "uv_binary", lambda: str(fake))
    for var in ("SSL_CERT_FILE", "PIP_CERT", "UV_INDEX_URL", "UV_DEFAULT_INDEX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple")
    text = resolve("six", Platform("3.12", "aarch64", "2.41"))
    assert text == 'lock-version = "1.0"\npackages = []\n'
    args = log.read_text().split()
    assert args[0] == str(bundle)
    assert args[args.index("--python-version") + 1] == "3.12"
    assert args[args.index("--python-platform") + 1] == "aarch64-manylinux_2_40"
    assert args[args.index("--index-url") + 1] == "https://mirror.example/simple"
    assert {"--generate-hashes", "--no-header"} <= set(args) and "--upgrade" not in args
    resolve("six", Platform("3.12"), index_url="https://other.example/simple", upgrade=True)
    args = log.read_text().split()
    assert args[args.index("--index-url") + 1] == "https://other.example/simple" and "--upgrade" in args


# --------------------------------------------------------------------------- hash pins, local paths


def test_hash_pin_is_honoured(local_index: Path) -> None:
    """A sha256 --hash pin that matches the locked file is accepted (and kept out of the lock)."""
    digest = hashlib.sha256((local_index / "alpha-2.0-py3-none-any.whl").read_bytes()).hexdigest()
    text = resolve(f"alpha --hash=sha256:{digest}\nbeta\n", Platform("3.11"))
    assert versions(text) == {"alpha": "2.0", "beta": "1.0"}
    # the separated spelling, an upper-case digest and a second allowed hash are the same pin
    assert resolve(f"alpha --hash sha256:{digest.upper()} --hash=sha256:{'0' * 64}\nbeta\n",
                   Platform("3.11")) == text


def test_hash_pin_that_does_not_match_is_refused(local_index: Path) -> None:
    """uv ignores the pin; venvoy refuses the lock, naming the file and its real hash."""
    wheel = local_index / "alpha-2.0-py3-none-any.whl"
    with pytest.raises(BadRequest) as info:
        resolve(f"alpha==2.0 --hash=sha256:{'0' * 64}\n", Platform("3.11"))
    message = str(info.value)
    assert message.startswith("alpha 2.0: alpha-2.0-py3-none-any.whl has sha256 "
                              f"{hashlib.sha256(wheel.read_bytes()).hexdigest()}, which is not")
    assert "\n" not in message


@pytest.mark.parametrize(("line", "match"), [
    (f"alpha --hash=sha1:{'0' * 40}", "is not sha256:<64 hex digits>"),
    ("alpha --hash=sha256:xyz", "is not sha256:<64 hex digits>"),
    ("alpha --hash", "is not sha256:<64 hex digits>"),
    (f"--hash=sha256:{'0' * 64}", "a --hash pin without a requirement"),
    (f"alpha --hash=sha256:{'0' * 64} >=1", "follows a --hash pin"),
    (f"/abs/alpha-2.0-py3-none-any.whl --hash=sha256:{'0' * 64}", "does not name its package"),
])
def test_bad_hash_pins_are_refused(line: str, match: str) -> None:
    with pytest.raises(BadRequest, match=match):
        resolve(line + "\n", Platform("3.11"))


@pytest.mark.parametrize("line", ["./alpha-2.0-py3-none-any.whl", "alpha @ ../x/alpha.whl",
                                  "sub/alpha-2.0-py3-none-any.whl"])
def test_relative_paths_given_as_lines_are_refused(line: str) -> None:
    """Lines with no requirements file (the library's packages, a record) have nothing
    to resolve a relative path against: refused, not resolved in uv's temp dir."""
    with pytest.raises(BadRequest, match="is a relative path"):
        resolve(line + "\n", Platform("3.11"))


def test_absolute_local_wheel_resolves(local_index: Path, tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "gamma", "3.0")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    text = resolve(f"gamma @ {wheel} --hash=sha256:{digest}\n", Platform("3.11"))
    (gamma,) = parse(text)
    assert (gamma.name, gamma.version, gamma.wheels[0].url) == ("gamma", "3.0", str(wheel))
