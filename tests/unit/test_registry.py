"""venvoy.image.registry against a tiny OCI registry served by this test (plain HTTP on
loopback): references, auth files, Basic and the Bearer token flow, redirects to blob
storage, digest checks, bounded reads, retries, and the one-line errors.

The Bearer token flow (Docker Hub, GHCR, Harbor, GitLab) can only be exercised here,
against this server: the CI registry uses Basic auth (htpasswd) over TLS.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import socket
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from venvoy.core.errors import BadRequest, DamagedError, NotFound, VenvoyError
from venvoy.image import oci
from venvoy.image import registry as reg

from ._archives import layer_tar
from .test_image import base_archive


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Registry:
    """An in-memory OCI distribution API: blobs, manifests, uploads; auth none/basic/bearer."""

    def __init__(self, auth: str = "none", user: str = "u", password: str = "p") -> None:  # noqa: S107 - a test server
        self.auth = auth
        self.user, self.password = user, password
        self.token = "tok-123"
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.uploads: dict[str, bytearray] = {}
        self.log: list[tuple[str, str, str | None]] = []  # method, path, Authorization
        self.fail_next: list[int] = []  # statuses to answer first (e.g. 503)
        self.redirect_blobs_to: str | None = None
        self.tamper: set[str] = set()  # blobs served with a byte changed
        self.silent = False
        self.proxied: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_a: Any) -> None:
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                      ) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _authorized(self) -> bool:
                got = self.headers.get("Authorization")
                if outer.auth == "none":
                    return True
                if outer.auth == "basic":
                    want = "Basic " + base64.b64encode(
                        f"{outer.user}:{outer.password}".encode()).decode()
                    if got == want:
                        return True
                    self._send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"auth"}]}',
                               {"WWW-Authenticate": 'Basic realm="test"'})
                    return False
                if got == f"Bearer {outer.token}":
                    return True
                host = self.headers.get("Host")
                self._send(401, b"{}", {"WWW-Authenticate":
                                        f'Bearer realm="http://{host}/token",service="test",'
                                        f'scope="repository:x/y:pull"'})
                return False

            def handle_one(self) -> None:
                body = b""
                if self.headers.get("Content-Length"):
                    body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.log.append((self.command, self.path, self.headers.get("Authorization")))
                if self.path.startswith("http://"):  # as an HTTP proxy: the absolute form
                    outer.proxied.append((self.path, self.headers.get("Proxy-Authorization")))
                    self.path = "/" + self.path.split("/", 3)[3]
                if outer.silent:
                    return
                if outer.fail_next:
                    self._send(outer.fail_next.pop(0), b"{}")
                    return
                path, _, query = self.path.partition("?")
                if path == "/token":
                    want = "Basic " + base64.b64encode(
                        f"{outer.user}:{outer.password}".encode()).decode()
                    if self.headers.get("Authorization") != want:
                        self._send(401, b"{}")
                        return
                    assert "scope=" in query and "service=test" in query
                    self._send(200, json.dumps({"token": outer.token}).encode())
                    return
                if path.startswith("/storage/"):
                    data = outer.blobs.get(path[len("/storage/"):])
                    self._send(200 if data is not None else 404, data or b"")
                    return
                if not self._authorized():
                    return
                parts = path.split("/")
                # /v2/<repo...>/(manifests|blobs)/<ref> or /v2/<repo>/blobs/uploads/<id>
                if "uploads" in parts:
                    i = parts.index("uploads")
                    repo = "/".join(parts[2:i - 1])
                    if self.command == "POST":
                        uid = str(len(outer.uploads))
                        outer.uploads[uid] = bytearray()
                        self._send(202, b"", {"Location": f"/v2/{repo}/blobs/uploads/{uid}?state=s"})
                        return
                    digest = dict(x.split("=", 1) for x in query.split("&"))["digest"]
                    digest = digest.replace("%3A", ":")
                    if sha(body) != digest:
                        self._send(400, b'{"errors":[{"code":"DIGEST_INVALID"}]}')
                        return
                    outer.blobs[digest] = body
                    self._send(201, b"", {"Location": f"/v2/{repo}/blobs/{digest}"})
                    return
                kind = parts[-2]
                ref = parts[-1]
                repo = "/".join(parts[2:-2])
                if kind == "blobs":
                    data = outer.blobs.get(ref)
                    if data is None:
                        self._send(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
                        return
                    if outer.redirect_blobs_to and self.command == "GET":
                        self._send(307, b"", {"Location": f"{outer.redirect_blobs_to}/storage/{ref}"})
                        return
                    if ref in outer.tamper:
                        data = b"X" + data[1:]
                    self._send(200, data)
                    return
                if kind == "manifests":
                    if self.command == "PUT":
                        outer.manifests[(repo, ref)] = (body, self.headers["Content-Type"])
                        outer.manifests[(repo, sha(body))] = (body, self.headers["Content-Type"])
                        self._send(201, b"", {"Docker-Content-Digest": sha(body)})
                        return
                    found = outer.manifests.get((repo, ref))
                    if found is None:
                        self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN",'
                                        b'"message":"manifest unknown"}]}')
                        return
                    self._send(200, found[0], {"Content-Type": found[1],
                                               "Docker-Content-Digest": sha(found[0])})
                    return
                self._send(404, b"")

            do_GET = do_HEAD = do_PUT = do_POST = handle_one

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def env(self, tmp: Path, **extra: str) -> dict[str, str]:
        auth = tmp / "auth.json"
        auth.write_text(json.dumps({"auths": {self.host: {"auth": base64.b64encode(
            f"{self.user}:{self.password}".encode()).decode()}}}))
        return {"HOME": str(tmp), "VENVOY_INSECURE_REGISTRIES": self.host,
                "REGISTRY_AUTH_FILE": str(auth), "VENVOY_REGISTRY_TIMEOUT": "5", **extra}

    def add_image(self, repo: str, tag: str, layers: list[bytes], *,
                  index: bool = False, annotations: dict[str, str] | None = None) -> str:
        """Store an image (gzip layers); returns the digest of the image manifest."""
        import gzip

        config = {"architecture": oci.host_architecture(), "os": "linux",
                  "config": {"Env": ["PATH=/usr/bin:/bin"]},
                  "rootfs": {"type": "layers", "diff_ids": [sha(x) for x in layers]}}
        raw_config = json.dumps(config).encode()
        self.blobs[sha(raw_config)] = raw_config
        descs = []
        for layer in layers:
            gz = gzip.compress(layer, mtime=0)
            self.blobs[sha(gz)] = gz
            descs.append({"mediaType": reg.OCI_LAYER_GZIP, "digest": sha(gz), "size": len(gz)})
        manifest: dict[str, Any] = {
            "schemaVersion": 2, "mediaType": reg.OCI_MANIFEST,
            "config": {"mediaType": reg.OCI_CONFIG, "digest": sha(raw_config),
                       "size": len(raw_config)}, "layers": descs}
        if annotations:
            manifest["annotations"] = annotations
        raw = json.dumps(manifest).encode()
        self.manifests[(repo, sha(raw))] = (raw, reg.OCI_MANIFEST)
        if index:
            other = {"mediaType": reg.OCI_MANIFEST, "digest": "sha256:" + "0" * 64, "size": 10,
                     "platform": {"architecture": "s390x", "os": "linux"}}
            mine = {"mediaType": reg.OCI_MANIFEST, "digest": sha(raw), "size": len(raw),
                    "platform": {"architecture": oci.host_architecture(), "os": "linux"}}
            idx = json.dumps({"schemaVersion": 2, "mediaType": reg.OCI_INDEX,
                              "manifests": [other, mine]}).encode()
            self.manifests[(repo, tag)] = (idx, reg.OCI_INDEX)
        else:
            self.manifests[(repo, tag)] = (raw, reg.OCI_MANIFEST)
        return sha(raw)


@pytest.fixture
def registry() -> Iterator[Registry]:
    r = Registry()
    yield r
    r.close()


LAYERS = [layer_tar([("file", "etc/a.txt", "hello\n")]),
          layer_tar([("file", "opt/b.txt", "world\n" * 100)])]


# -- references ---------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "host", "repo", "tag", "digest"), [
    ("ghcr.io/org/env:v1", "ghcr.io", "org/env", "v1", None),
    ("docker://localhost:5443/venvoy/base:bookworm", "localhost:5443", "venvoy/base", "bookworm",
     None),
    ("localhost/x", "localhost", "x", None, None),
    ("docker.io/python:3.11-slim", "docker.io", "library/python", "3.11-slim", None),
    ("reg.example.com:5000/a/b/c@sha256:" + "a" * 64, "reg.example.com:5000", "a/b/c", None,
     "sha256:" + "a" * 64),
    ("h.io/a:t@sha256:" + "b" * 64, "h.io", "a", "t", "sha256:" + "b" * 64),
])
def test_parse_reference(text: str, host: str, repo: str, tag: str | None,
                         digest: str | None) -> None:
    ref = reg.parse_reference(text)
    assert (ref.host, ref.repository, ref.tag, ref.digest) == (host, repo, tag, digest)
    assert reg.parse_reference(str(ref)) == ref


def test_reference_canonical_and_api_host() -> None:
    assert reg.parse_reference("h.io/a").canonical() == "h.io/a:latest"
    assert reg.parse_reference("docker.io/a/b:1").api_host == "registry-1.docker.io"


@pytest.mark.parametrize("text", [
    "", "python:3.11", "org/env:v1", "ghcr.io/Org/env", "ghcr.io/a//b", "ghcr.io/a:b:c",
    "ghcr.io/a@sha256:short", "ghcr.io/a@md5:" + "a" * 32, "gh cr.io/a", "ghcr.io/a:-bad",
    "-x.io/a", "h.io:99999/a", "h.io/a\n", "h.io/" + "a" * 300, "ghcr.io/a/../b",
])
def test_bad_references_are_one_line(text: str) -> None:
    with pytest.raises(BadRequest) as err:
        reg.parse_reference(text)
    assert "\n" not in str(err.value)


# -- configuration ---------------------------------------------------------------------------

def test_credentials_from_docker_and_containers_files(tmp_path: Path) -> None:
    docker = tmp_path / ".docker"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps({"auths": {
        "https://reg.io/v1/": {"auth": base64.b64encode(b"alice:s3:cret").decode()},
        "other.io": {"username": "bob", "password": "pw"},
        "tok.io": {"identitytoken": "abc"}}}))
    env = {"HOME": str(tmp_path)}
    assert reg.credentials("reg.io", env) == ("alice", "s3:cret")
    assert reg.credentials("other.io", env) == ("bob", "pw")
    assert reg.credentials("tok.io", env) == ("<token>", "abc")
    assert reg.credentials("none.io", env) is None
    # containers' auth.json comes first
    run = tmp_path / "run" / "containers"
    run.mkdir(parents=True)
    (run / "auth.json").write_text(json.dumps({"auths": {"reg.io": {
        "auth": base64.b64encode(b"carol:x").decode()}}}))
    assert reg.credentials("reg.io", {**env, "XDG_RUNTIME_DIR": str(tmp_path / "run")}) == \
        ("carol", "x")
    explicit = tmp_path / "mine.json"
    explicit.write_text(json.dumps({"auths": {"reg.io": {"auth": base64.b64encode(b"d:y").decode()}}}))
    assert reg.credentials("reg.io", {**env, "REGISTRY_AUTH_FILE": str(explicit)}) == ("d", "y")


def test_bad_auth_entry_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "a.json"
    f.write_text(json.dumps({"auths": {"reg.io": {"auth": "!!notbase64"}}}))
    with pytest.raises(VenvoyError, match="not base64"):
        reg.credentials("reg.io", {"HOME": str(tmp_path), "REGISTRY_AUTH_FILE": str(f)})
    f.write_text("{not json")
    with pytest.raises(VenvoyError, match="not valid JSON"):
        reg.credentials("reg.io", {"HOME": str(tmp_path), "REGISTRY_AUTH_FILE": str(f)})


def test_credential_helper_is_called_with_argv(tmp_path: Path) -> None:
    helper = tmp_path / "bin" / "docker-credential-fake"
    helper.parent.mkdir()
    helper.write_text('#!/bin/sh\nread host\n[ "$1" = get ] && '
                      'printf \'{"Username":"h-%s","Secret":"sec"}\' "$host"\n')
    helper.chmod(0o755)
    (tmp_path / ".docker").mkdir()
    (tmp_path / ".docker" / "config.json").write_text(json.dumps({"credHelpers": {"reg.io": "fake"}}))
    env = {"HOME": str(tmp_path), "PATH": str(helper.parent)}
    assert reg.credentials("reg.io", env) == ("h-reg.io", "sec")


def test_proxy_and_no_proxy() -> None:
    env = {"HTTPS_PROXY": "http://proxy.corp:3128", "NO_PROXY": "localhost,.internal,10.0.0.1:5000"}
    assert reg.proxy_for("https", "ghcr.io", 443, env) == ("proxy.corp", 3128)
    assert reg.proxy_for("https", "localhost", 5443, env) is None
    assert reg.proxy_for("https", "reg.internal", 443, env) is None
    assert reg.proxy_for("https", "10.0.0.1", 5000, env) is None
    assert reg.proxy_for("https", "10.0.0.1", 443, env) == ("proxy.corp", 3128)
    assert reg.proxy_for("https", "x.io", 443, {"https_proxy": "proxy:8080"}) == ("proxy", 8080)
    assert reg.proxy_for("https", "x.io", 443, {"NO_PROXY": "*", "HTTPS_PROXY": "p:1"}) is None
    assert reg.proxy_for("http", "x.io", 80, {"HTTPS_PROXY": "p:1"}) is None


def test_plain_http_goes_through_the_proxy(registry: Registry, tmp_path: Path) -> None:
    digest = registry.add_image("x/y", "t", LAYERS)
    registry.manifests[("x/y", "t")] = registry.manifests[("x/y", digest)]
    env = {"HOME": str(tmp_path), "VENVOY_INSECURE_REGISTRIES": "reg.invalid:5000",
           "HTTP_PROXY": f"http://me:p%40ss@{registry.host}"}
    ref = reg.parse_reference("reg.invalid:5000/x/y:t")  # not resolvable: only the proxy knows
    assert reg.resolve(ref, environ=env) == digest
    assert registry.proxied[0][0] == "http://reg.invalid:5000/v2/x/y/manifests/t"
    assert registry.proxied[0][1] == "Basic " + base64.b64encode(b"me:p@ss").decode()


def test_timeout_setting() -> None:
    assert reg.timeout_default({}) == reg.DEFAULT_TIMEOUT
    assert reg.timeout_default({"VENVOY_REGISTRY_TIMEOUT": "7"}) == 7.0
    with pytest.raises(VenvoyError, match="VENVOY_REGISTRY_TIMEOUT"):
        reg.timeout_default({"VENVOY_REGISTRY_TIMEOUT": "soon"})


# -- pull ------------------------------------------------------------------------------------

@pytest.mark.parametrize("auth", ["none", "basic", "bearer"])
def test_pull_writes_a_docker_archive(registry: Registry, tmp_path: Path, auth: str) -> None:
    registry.auth = auth
    digest = registry.add_image("x/y", "t", LAYERS)
    env = registry.env(tmp_path)
    ref = reg.parse_reference(f"{registry.host}/x/y:t")
    assert reg.resolve(ref, environ=env) == digest
    pulled = reg.pull_archive(ref, tmp_path / "out" / "img.tar", environ=env)
    assert pulled.manifest_digest == digest
    info = oci.inspect_archive(pulled.path)
    assert info.image_id == pulled.image_id
    assert info.diff_ids == tuple(sha(x) for x in LAYERS)
    with oci.open_layers(pulled.path) as layers:
        names = [[m.name for m in layer] for layer in layers]
    assert names == [["etc/a.txt"], ["opt/b.txt"]]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img.tar"]  # no debris
    if auth == "bearer":
        assert any(path.startswith("/token") for _m, path, _a in registry.log)
        assert any(a == f"Bearer {registry.token}" for _m, _p, a in registry.log)


def test_index_picks_this_host(registry: Registry, tmp_path: Path) -> None:
    digest = registry.add_image("x/y", "multi", LAYERS, index=True)
    ref = reg.parse_reference(f"{registry.host}/x/y:multi")
    env = registry.env(tmp_path)
    assert reg.resolve(ref, environ=env) == digest
    assert reg.pull_archive(ref, tmp_path / "i.tar", environ=env).manifest_digest == digest


def test_moved_tag_is_noticed(registry: Registry, tmp_path: Path) -> None:
    ref = reg.parse_reference(f"{registry.host}/x/y:t")
    env = registry.env(tmp_path)
    first = registry.add_image("x/y", "t", LAYERS[:1])
    assert reg.resolve(ref, environ=env) == first
    second = registry.add_image("x/y", "t", LAYERS)
    assert second != first
    assert reg.resolve(ref, environ=env) == second


def test_tampered_blob_is_refused(registry: Registry, tmp_path: Path) -> None:
    registry.add_image("x/y", "t", LAYERS)
    manifest = json.loads(registry.manifests[("x/y", "t")][0])
    registry.tamper.add(manifest["layers"][1]["digest"])
    dest = tmp_path / "o" / "img.tar"
    with pytest.raises(DamagedError, match="does not match its digest"):
        reg.pull_archive(reg.parse_reference(f"{registry.host}/x/y:t"), dest,
                         environ=registry.env(tmp_path))
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []


def test_manifest_by_digest_must_match(registry: Registry, tmp_path: Path) -> None:
    digest = registry.add_image("x/y", "t", LAYERS)
    raw, media = registry.manifests[("x/y", digest)]
    registry.manifests[("x/y", digest)] = (raw + b" ", media)
    with pytest.raises(DamagedError, match="does not match its digest"):
        reg.resolve(reg.parse_reference(f"{registry.host}/x/y@{digest}"),
                    environ=registry.env(tmp_path))


def test_huge_manifest_is_refused(registry: Registry, tmp_path: Path) -> None:
    registry.manifests[("x/y", "big")] = (b"{" + b" " * (reg.MAX_MANIFEST + 10) + b"}",
                                          reg.OCI_MANIFEST)
    with pytest.raises(DamagedError, match="more than"):
        reg.resolve(reg.parse_reference(f"{registry.host}/x/y:big"), environ=registry.env(tmp_path))


def test_redirect_to_storage_drops_authorization(tmp_path: Path) -> None:
    main, storage = Registry(auth="basic"), Registry()
    try:
        main.add_image("x/y", "t", LAYERS)
        storage.blobs = main.blobs
        main.redirect_blobs_to = f"http://{storage.host}"
        env = main.env(tmp_path, VENVOY_INSECURE_REGISTRIES=f"{main.host},{storage.host}")
        pulled = reg.pull_archive(reg.parse_reference(f"{main.host}/x/y:t"), tmp_path / "i.tar",
                                  environ=env)
        assert oci.inspect_archive(pulled.path).diff_ids == tuple(sha(x) for x in LAYERS)
        assert storage.log and all(auth is None for _m, _p, auth in storage.log)
        assert any(auth and auth.startswith("Basic ") for _m, _p, auth in main.log)
    finally:
        main.close()
        storage.close()


def test_5xx_is_retried_then_works(registry: Registry, tmp_path: Path) -> None:
    digest = registry.add_image("x/y", "t", LAYERS)
    registry.fail_next = [503, 502]
    assert reg.resolve(reg.parse_reference(f"{registry.host}/x/y:t"),
                       environ=registry.env(tmp_path)) == digest


def test_4xx_is_not_retried(registry: Registry, tmp_path: Path) -> None:
    registry.fail_next = [400]
    with pytest.raises(VenvoyError, match="answered 400"):
        reg.resolve(reg.parse_reference(f"{registry.host}/x/y:t"), environ=registry.env(tmp_path))
    assert len(registry.log) == 1


# -- the one-line failures ---------------------------------------------------------------

def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and len(text) < 400
    return text


def test_404(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(NotFound) as err:
        reg.resolve(reg.parse_reference(f"{registry.host}/no/such:tag"),
                    environ=registry.env(tmp_path))
    assert "not found" in _one_line(err.value) and "check the repository name" in str(err.value)


@pytest.mark.parametrize("auth", ["basic", "bearer"])
def test_401_wrong_password(registry: Registry, tmp_path: Path, auth: str) -> None:
    registry.auth = auth
    registry.add_image("x/y", "t", LAYERS)
    env = registry.env(tmp_path)
    registry.password = "other"
    with pytest.raises(VenvoyError) as err:
        reg.resolve(reg.parse_reference(f"{registry.host}/x/y:t"), environ=env)
    assert "refused the credentials" in _one_line(err.value) and "login" in str(err.value)


def test_401_without_credentials(registry: Registry, tmp_path: Path) -> None:
    registry.auth = "basic"
    env = {"HOME": str(tmp_path), "VENVOY_INSECURE_REGISTRIES": registry.host}
    with pytest.raises(VenvoyError) as err:
        reg.resolve(reg.parse_reference(f"{registry.host}/x/y:t"), environ=env)
    assert "wants credentials" in _one_line(err.value) and "podman login" in str(err.value)


def test_unreachable(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(VenvoyError) as err:
        reg.resolve(reg.parse_reference(f"127.0.0.1:{port}/x/y:t"),
                    environ={"HOME": str(tmp_path)})
    assert "connection refused" in _one_line(err.value)


def test_timeout(tmp_path: Path) -> None:
    with socket.socket() as server:  # accepts (the kernel does) and never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        host = f"127.0.0.1:{server.getsockname()[1]}"
        env = {"HOME": str(tmp_path), "VENVOY_REGISTRY_TIMEOUT": "0.5",
               "VENVOY_INSECURE_REGISTRIES": host}
        with pytest.raises(VenvoyError) as err:
            reg.resolve(reg.parse_reference(f"{host}/x/y:t"), environ=env)
    assert "did not answer within" in _one_line(err.value)
    assert "VENVOY_REGISTRY_TIMEOUT" in str(err.value)


def test_tls_to_a_plain_http_server_is_one_line(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(VenvoyError) as err:
        reg.resolve(reg.parse_reference(f"{registry.host}/x/y:t"),
                    environ={"HOME": str(tmp_path), "VENVOY_REGISTRY_TIMEOUT": "5"})
    assert "TLS" in _one_line(err.value) or "cannot reach" in str(err.value)


# -- push ------------------------------------------------------------------------------------

def test_push_then_pull_keeps_the_image_id(registry: Registry, tmp_path: Path) -> None:
    registry.auth = "bearer"
    archive = base_archive(tmp_path / "a.tar", LAYERS, labels={"k": "v"})
    env = registry.env(tmp_path)
    ref = reg.parse_reference(f"{registry.host}/team/env:v1")
    digest = reg.push_archive(archive, ref, environ=env, annotations={"org.venvoy.x": "1"})
    raw, media = registry.manifests[("team/env", "v1")]
    assert sha(raw) == digest and media == reg.OCI_MANIFEST
    assert json.loads(raw)["annotations"] == {"org.venvoy.x": "1"}
    pulled = reg.pull_archive(ref, tmp_path / "b.tar", environ=env)
    assert pulled.image_id == oci.inspect_archive(archive).image_id
    assert pulled.annotations == {"org.venvoy.x": "1"}
    assert pulled.manifest_digest == digest
    # a second push uploads nothing new: every blob is found by HEAD
    registry.log.clear()
    assert reg.push_archive(archive, ref, environ=env, annotations={"org.venvoy.x": "1"}) == digest
    assert not any(m in ("POST", "PATCH") for m, _p, _a in registry.log)


def test_push_is_reproducible(registry: Registry, tmp_path: Path) -> None:
    archive = base_archive(tmp_path / "a.tar", LAYERS)
    env = registry.env(tmp_path)
    one = reg.push_archive(archive, reg.parse_reference(f"{registry.host}/a/b:1"), environ=env)
    two = reg.push_archive(archive, reg.parse_reference(f"{registry.host}/c/d:2"), environ=env)
    assert one == two


def test_pulled_oci_archive_reads_as_tar(registry: Registry, tmp_path: Path) -> None:
    registry.add_image("x/y", "t", LAYERS)
    pulled = reg.pull_archive(reg.parse_reference(f"{registry.host}/x/y:t"), tmp_path / "i.tar",
                              environ=registry.env(tmp_path))
    with tarfile.open(pulled.path) as tar:
        manifest = json.load(io.BytesIO(tar.extractfile("manifest.json").read()))  # type: ignore[union-attr]
    assert len(manifest) == 1 and len(manifest[0]["Layers"]) == 2


# -- environments: venvoy push / pull (transport.registry) ----------------------------------

def _stores(tmp_path: Path, registry: Registry) -> tuple[Any, Any]:
    from venvoy.store.layout import Store

    from .test_archive import make_env

    env = registry.env(tmp_path)
    source = make_env(Store(tmp_path / "src-store", environ=env), tmp_path)
    return source, Store(tmp_path / "dest-store", environ=env)


def test_push_then_pull_an_environment(registry: Registry, tmp_path: Path) -> None:
    from venvoy.transport import registry as transport

    registry.auth = "basic"
    source, dest = _stores(tmp_path, registry)
    pinned = transport.push_env(source, f"{registry.host}/team/demo:v1", environ=dest.environ)
    assert pinned.startswith(f"{registry.host}/team/demo:v1@sha256:")
    env = transport.pull_env(f"{registry.host}/team/demo:v1", store=dest, name="copy")
    assert (env.name, env.image_id, env.identity, env.lock_hash) == \
        ("copy", source.image_id, source.identity, source.lock_hash)
    got, want = oci.inspect_archive(env.archive), oci.inspect_archive(source.archive)
    assert (got.image_id, got.diff_ids) == (want.image_id, want.diff_ids)  # the very same image
    assert (env.dir / "pylock.toml").read_text() == (source.dir / "pylock.toml").read_text()
    # pinned by digest, and idempotent
    again = transport.pull_env(pinned, store=dest, name="copy")
    assert again.image_id == env.image_id
    assert not dest.tmp.exists() or not list(dest.tmp.iterdir())  # no debris


def test_push_default_tag_is_the_identity(registry: Registry, tmp_path: Path) -> None:
    from venvoy.transport import registry as transport

    source, dest = _stores(tmp_path, registry)
    pinned = transport.push_env(source, f"{registry.host}/team/demo", environ=dest.environ)
    assert pinned.split("@")[0].endswith(f":{source.identity[:12]}")


def test_pull_of_a_plain_image_is_refused(registry: Registry, tmp_path: Path) -> None:
    from venvoy.transport import registry as transport

    _source, dest = _stores(tmp_path, registry)
    registry.add_image("plain/img", "t", LAYERS)
    with pytest.raises(VenvoyError, match="is not a venvoy environment"):
        transport.pull_env(f"{registry.host}/plain/img:t", store=dest)
    assert not (dest.root / "envs").exists() or not list((dest.root / "envs").iterdir())


def test_pull_with_a_forged_lock_is_refused(registry: Registry, tmp_path: Path) -> None:
    from venvoy.transport import registry as transport

    source, dest = _stores(tmp_path, registry)
    transport.push_env(source, f"{registry.host}/team/demo:v1", environ=dest.environ)
    raw, media = registry.manifests[("team/demo", "v1")]
    manifest = json.loads(raw)
    manifest["annotations"][transport.ANNOTATION_LOCK] += "\n# changed\n"
    registry.manifests[("team/demo", "v1")] = (json.dumps(manifest).encode(), media)
    with pytest.raises(VenvoyError, match=r"pylock\.toml does not match"):
        transport.pull_env(f"{registry.host}/team/demo:v1", store=dest)
    assert not (dest.root / "envs").exists() or not list((dest.root / "envs").iterdir())


def test_pull_with_a_forged_record_is_refused(registry: Registry, tmp_path: Path) -> None:
    from venvoy.transport import registry as transport

    source, dest = _stores(tmp_path, registry)
    transport.push_env(source, f"{registry.host}/team/demo:v1", environ=dest.environ)
    raw, media = registry.manifests[("team/demo", "v1")]
    manifest = json.loads(raw)
    record = json.loads(manifest["annotations"][transport.ANNOTATION_ENV])
    record["image_id"] = "sha256:" + "1" * 64
    manifest["annotations"][transport.ANNOTATION_ENV] = json.dumps(record)
    registry.manifests[("team/demo", "v1")] = (json.dumps(manifest).encode(), media)
    with pytest.raises(VenvoyError):
        transport.pull_env(f"{registry.host}/team/demo:v1", store=dest)
    assert not (dest.root / "envs").exists() or not list((dest.root / "envs").iterdir())


def test_cli_push_and_pull(registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    from venvoy.cli.main import main
    from venvoy.store.layout import Store

    from .test_archive import make_env

    env = registry.env(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("VENVOY_HOME", str(tmp_path / "store"))
    make_env(Store(tmp_path / "store"), tmp_path)
    assert main(["push", "demo", f"{registry.host}/t/demo:1", "-q"]) == 0
    pinned = capsys.readouterr().out.strip()
    assert pinned.startswith(f"{registry.host}/t/demo:1@sha256:")
    assert main(["pull", pinned, "--name", "other", "-q"]) == 0
    assert main(["pull", f"{registry.host}/t/nothing:1", "-q"]) == 125
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err and "venvoy: error:" in err


# -- init --base HOST/REPO:TAG for runtimes without an image store (build.bases) -------------

def test_base_from_a_registry_is_pulled_once_per_digest(registry: Registry, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from venvoy.build import bases

    libc = "GNU C Library (Debian GLIBC 2.36-9) stable release version 2.36.\n"
    layer = layer_tar([("dir", "usr"), ("dir", "usr/bin"), ("file", "usr/bin/python3.11", "x"),
                       ("dir", "lib"), ("dir", "lib/x86_64-linux-gnu"),
                       ("file", "lib/x86_64-linux-gnu/libc.so.6", libc)])
    digest = registry.add_image("venvoy/base", "bookworm", [layer])
    env = registry.env(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ref = f"{registry.host}/venvoy/base:bookworm"
    assert bases.names_registry(ref) and not bases.names_registry("python:3.11-slim")
    said: list[str] = []
    found = bases.resolve_base("3.11", ref, store=tmp_path / "store", runtime=None,
                               progress=said.append)
    assert (found.python, found.glibc) == ("3.11", "2.36")
    record = json.loads(found.archive.with_suffix(".json").read_text())
    assert record["manifest_digest"] == digest and record["ref"] == ref
    pulls = sum(1 for m, p, _a in registry.log if m == "GET" and "/blobs/" in p)
    again = bases.resolve_base("3.11", ref, store=tmp_path / "store", runtime=None)
    assert again == found
    assert sum(1 for m, p, _a in registry.log if m == "GET" and "/blobs/" in p) == pulls
    with pytest.raises(VenvoyError, match="--offline"):
        bases.resolve_base("3.11", ref, store=tmp_path / "other", runtime=None, offline=True)


# -- found by breaking it (issue 9) ------------------------------------------------------

def test_auth_file_that_is_a_fifo_does_not_hang(registry: Registry, tmp_path: Path) -> None:
    import os

    registry.auth = "basic"
    fifo = tmp_path / "auth.fifo"
    os.mkfifo(fifo)  # nobody writes it: a blocking open would wait for ever
    env = {**registry.env(tmp_path), "REGISTRY_AUTH_FILE": str(fifo)}
    with pytest.raises(VenvoyError, match="wants credentials"):
        reg.resolve(reg.parse_reference(f"{registry.host}/x/y:t"), environ=env)


def test_redirect_to_plain_http_on_the_same_host_drops_authorization(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, str | None]] = []

    class Answer:
        def __init__(self, status: int, location: str = "") -> None:
            self.status, self.location = status, location

        def header(self, name: str) -> str:
            return self.location if name == "Location" else ""

        def close(self) -> None:
            pass

    def raw(_self: reg.Session, _method: str, url: str, headers: dict[str, str],
            _body: Any = None) -> Any:
        sent.append((url, headers.get("Authorization")))
        if url.startswith("https://"):
            return Answer(307, "http://ghcr.io/storage/blob")
        return Answer(200)

    monkeypatch.setattr(reg.Session, "_raw", raw)
    sess = reg.session(reg.parse_reference("ghcr.io/x/y:t"), environ={"HOME": str(tmp_path)})
    sess._auth = "Basic c2VjcmV0"
    sess.request("GET", f"{sess.base_url()}/blobs/sha256:{'a' * 64}")
    assert sent[0][1] == "Basic c2VjcmV0"
    assert sent[1] == ("http://ghcr.io/storage/blob", None)


def test_trickled_manifest_is_cut_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setattr(reg, "SMALL_READ_SECONDS", 0.5)
    stop = threading.Event()

    def serve(server: socket.socket) -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100000\r\n\r\n")
            while not stop.is_set():  # a byte now and then, each well within the timeout
                try:
                    conn.sendall(b" ")
                except OSError:
                    return
                time.sleep(0.02)

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        host = f"127.0.0.1:{server.getsockname()[1]}"
        thread = threading.Thread(target=serve, args=(server,), daemon=True)
        thread.start()
        env = {"HOME": str(tmp_path), "VENVOY_REGISTRY_TIMEOUT": "0.1",
               "VENVOY_INSECURE_REGISTRIES": host}
        start = time.monotonic()
        try:
            with pytest.raises(VenvoyError, match="did not answer within"):
                reg.resolve(reg.parse_reference(f"{host}/x/y:t"), environ=env)
        finally:
            stop.set()
        assert time.monotonic() - start < 5


def test_plain_http_realm_elsewhere_gets_no_credentials(registry: Registry, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # even when the registry itself is plain HTTP (listed), an unlisted realm is refused
    sess = reg.session(reg.parse_reference(f"{registry.host}/x/y:t"), environ=registry.env(tmp_path))
    called: list[str] = []
    monkeypatch.setattr(reg.Session, "_raw", lambda *a, **_k: called.append(a[2]))
    with pytest.raises(VenvoyError, match=r"plain HTTP to 127\.0\.0\.2:1"):
        sess._token("http://127.0.0.2:1/token", None, "repository:x/y:pull", ("u", "p"))
    assert called == []


def test_a_bad_status_line_is_one_printable_line(tmp_path: Path) -> None:
    def serve(server: socket.socket) -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 999999 \x1b[31mred\r\n\r\n")

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        host = f"127.0.0.1:{server.getsockname()[1]}"
        threading.Thread(target=serve, args=(server,), daemon=True).start()
        env = {"HOME": str(tmp_path), "VENVOY_INSECURE_REGISTRIES": host}
        with pytest.raises(VenvoyError) as err:
            reg.resolve(reg.parse_reference(f"{host}/x/y:t"), environ=env)
    assert "999999" in _one_line(err.value) and "\x1b" not in str(err.value)


def test_a_hostile_format_annotation_is_quoted(tmp_path: Path) -> None:
    from venvoy.transport import registry as transport

    pulled = reg.PulledImage(tmp_path / "i.tar", "sha256:" + "a" * 64, "sha256:" + "b" * 64,
                             {transport.ANNOTATION_FORMAT: "venvoy-registry/9\n\x1b[2Jevil"})
    with pytest.raises(VenvoyError, match="newer venvoy") as err:
        transport._environment(pulled, "h.io/x:t")
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value)


def test_pushed_annotations_carry_no_url_credentials() -> None:
    """The record pushed to a registry is redacted as an exported archive's is."""
    from venvoy.transport.common import redacted

    record = {"sources": ["https://user:s3cret@pypi.example.org/simple", "git+ssh://git@host/x"],
              "n": 1}
    assert redacted(record) == {"sources": ["https://***@pypi.example.org/simple",
                                            "git+ssh://git@host/x"], "n": 1}
