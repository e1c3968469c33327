"""A small client of the OCI distribution API (Docker Registry HTTP API v2).

venvoy pulls and pushes images itself, with no container runtime, so that
Apptainer, Singularity and Charliecloud users (and Docker/Podman users) get
the same image from a registry: Harbor, GitLab, GHCR, Docker Hub, a
``docker-registry`` (CNCF distribution) of one's own.

Public API (other modules code against these)::

    parse_reference(text) -> Reference
    resolve(ref, environ=None, timeout=...) -> str            # the manifest digest
    pull_archive(ref, dest, environ=None, progress=None) -> PulledImage
    push_archive(archive, ref, environ=None, progress=None, annotations=None) -> str

What is taken from the places users already keep it:

- credentials: ``REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
  ``~/.config/containers/auth.json``, ``$DOCKER_CONFIG/config.json`` or
  ``~/.docker/config.json`` (``auths.HOST.auth`` base64 ``user:password``,
  or ``username``/``password``, or ``identitytoken``); a ``credHelpers`` /
  ``credsStore`` entry runs ``docker-credential-NAME get`` (argv, host on stdin);
- proxies: ``HTTPS_PROXY``/``https_proxy`` (``HTTP_PROXY`` for plain-HTTP
  registries) and ``NO_PROXY``; the CONNECT tunnel carries the TLS session;
- CAs: ``SSL_CERT_FILE`` (or ``REQUESTS_CA_BUNDLE``), else the system's
  (``/etc/ssl/certs/ca-certificates.crt``), plus the per-registry directories
  Docker and Podman use: ``/etc/docker/certs.d/HOST[:PORT]/*.crt``,
  ``/etc/containers/certs.d/HOST[:PORT]/*.crt``,
  ``~/.config/containers/certs.d/HOST[:PORT]/*.crt``;
- plain HTTP only for hosts listed in ``VENVOY_INSECURE_REGISTRIES`` (comma
  separated ``HOST[:PORT]``), never by guessing.

Authentication: HTTP Basic (htpasswd registries) and the Bearer token flow
(``WWW-Authenticate: Bearer realm=...,service=...,scope=...``, as Docker Hub,
GHCR, Harbor and GitLab answer). Tokens are asked for with the credentials (if
any) and kept for the session.

Everything a registry sends is hostile: every response is read with a bound
(manifests and configs <= 4 MiB, error bodies <= 64 KiB), blobs are streamed to
a temporary file and their sha256 checked against the digest before use, a
manifest fetched by digest must hash to that digest, redirects (to blob
storage) are followed at most 5 times and never carry ``Authorization`` to
another host, and only 5xx and 429 answers are retried (3 attempts, with
backoff). Every failure is one :class:`VenvoyError` line that says what to do.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import gzip
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import tarfile
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from venvoy.core.errors import BadRequest, DamagedError, NotFound, VenvoyError

#: Media types venvoy reads and writes.
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)

#: The most a manifest, index or config may hold (real ones: a few KiB).
MAX_MANIFEST = 4 << 20
#: The most an error body or token answer may hold.
MAX_SMALL = 64 << 10
#: The most one blob may hold (VENVOY_REGISTRY_MAX_BLOB overrides).
MAX_BLOB = 64 << 30
DEFAULT_TIMEOUT = 30.0
#: The least time a small answer (manifest, token, error) may take in all, trickled or not.
SMALL_READ_SECONDS = 60.0
ATTEMPTS = 3
MAX_REDIRECTS = 5
_CHUNK = 1 << 20
_BLOCKSIZE = 1 << 16  # what http.client sends a file body in
_GZIP_LEVEL = 1

Progress = Callable[[str], None]

_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
                   r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")


def _quiet(_msg: str) -> None:
    pass


# -- references ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Reference:
    """An image in a registry: ``HOST[:PORT]/REPO[:TAG][@sha256:HEX]``."""

    host: str  # "ghcr.io", "localhost:5443" (as written; "docker.io" for Docker Hub)
    repository: str  # "org/name"
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        out = f"{self.host}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    def canonical(self) -> str:
        """The reference with a tag (``latest`` when none was given) or its digest."""
        if self.digest:
            return f"{self.host}/{self.repository}@{self.digest}"
        return f"{self.host}/{self.repository}:{self.tag or 'latest'}"

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest, else the tag (``latest``)."""
        return self.digest or self.tag or "latest"

    @property
    def api_host(self) -> str:
        """The host the API is at (Docker Hub's API is not at docker.io)."""
        return "registry-1.docker.io" if self.host in ("docker.io", "index.docker.io") else self.host

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.host, self.repository, self.tag, digest)


def parse_reference(text: str) -> Reference:
    """Check and split ``[docker://]HOST[:PORT]/REPO[:TAG][@sha256:HEX]``.

    The host is required (a first component with a dot or a port, or
    ``localhost``): venvoy never guesses a registry. ``docker.io/NAME`` means
    ``docker.io/library/NAME``. Raises :class:`BadRequest` with one line.
    """
    raw = text
    hint = "write it as HOST[:PORT]/REPOSITORY[:TAG][@sha256:DIGEST], e.g. ghcr.io/org/env:v1"
    if not isinstance(text, str) or not text or len(text) > 1024 or not text.isascii() \
            or any(c.isspace() or ord(c) < 32 for c in text):
        raise BadRequest(f"bad image reference {str(raw)[:120]!r}", hint)
    for prefix in ("docker://", "oci://"):
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    digest: str | None = None
    if "@" in text:
        text, _, digest = text.partition("@")
        if not _DIGEST.fullmatch(digest):
            raise BadRequest(f"bad digest in image reference {raw[:120]!r} (sha256:<64 hex> expected)",
                             hint)
    host, sep, rest = text.partition("/")
    if not sep or not ("." in host or ":" in host or host == "localhost"):
        raise BadRequest(f"image reference {raw[:120]!r} names no registry host", hint)
    if not _HOST.fullmatch(host):
        raise BadRequest(f"bad registry host {host[:80]!r} in image reference", hint)
    port = host.rsplit(":", 1)[1] if ":" in host and not host.endswith("]") else None
    if port is not None and not 0 < int(port) < 65536:
        raise BadRequest(f"bad port in image reference {raw[:120]!r}", hint)
    tag: str | None = None
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        rest, _, tag = rest.rpartition(":")
        if not _TAG.fullmatch(tag):
            raise BadRequest(f"bad tag {tag[:80]!r} in image reference", hint)
    parts = rest.split("/")
    if not rest or len(rest) > 255 or not all(_COMPONENT.fullmatch(p) for p in parts):
        raise BadRequest(f"bad repository {rest[:120]!r} in image reference (lower-case letters, "
                         "digits and . _ - between / only)", hint)
    if host in ("docker.io", "index.docker.io") and len(parts) == 1:
        rest = f"library/{rest}"
    return Reference(host, rest, tag, digest)


# -- configuration: auth files, CAs, proxies --------------------------------------------------

def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or os.path.expanduser("~"))


def auth_files(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The auth files looked at, in order (the first that names the host wins)."""
    env = _env(environ)
    files: list[Path] = []
    if env.get("REGISTRY_AUTH_FILE"):
        files.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        files.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    config_home = Path(env.get("XDG_CONFIG_HOME") or _home(env) / ".config")
    files.append(config_home / "containers" / "auth.json")
    if env.get("DOCKER_CONFIG"):
        files.append(Path(env["DOCKER_CONFIG"]) / "config.json")
    files.append(_home(env) / ".docker" / "config.json")
    return files


def _read_json_file(path: Path, limit: int = 1 << 20) -> Any:
    try:  # without blocking: a FIFO (or a device) there must not hang venvoy
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None  # not a file: as absent
            raw = fh.read(limit + 1)
    except OSError:
        return None
    if len(raw) > limit:
        raise VenvoyError(f"{path} is larger than {limit >> 10} KiB", "is it really an auth file?")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise VenvoyError(f"{path} is not valid JSON", "fix or remove it (or log in again)") from None


def _key_host(key: str) -> str:
    """An ``auths`` key (``https://host/v1/``, ``host``, ``host/repo``) as a host."""
    key = key.strip()
    if "://" in key:
        key = urllib.parse.urlsplit(key).netloc
    return key.split("/", 1)[0].lower()


def _helper(name: str, host: str, env: Mapping[str, str]) -> tuple[str, str] | None:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        return None
    binary = shutil.which(f"docker-credential-{name}", path=env.get("PATH"))
    if binary is None:
        raise VenvoyError(f"the credential helper docker-credential-{name} named for {host} "
                          "is not on PATH", "install it, or log in with `podman login` instead")
    try:
        done = subprocess.run([binary, "get"], input=host.encode(), capture_output=True,
                              timeout=30, check=False, env=dict(env))
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VenvoyError(f"credential helper docker-credential-{name} failed: {exc}",
                          "check the helper, or log in with `podman login`") from None
    if done.returncode != 0:
        return None  # "credentials not found": anonymous
    try:
        data = json.loads(done.stdout[:MAX_SMALL])
        user, secret = str(data["Username"]), str(data["Secret"])
    except (ValueError, KeyError, TypeError):
        raise VenvoyError(f"credential helper docker-credential-{name} answered nonsense",
                          "check the helper") from None
    return user, secret


def credentials(host: str, environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """(user, password) for ``host`` from the users' auth files, or None (anonymous).

    An ``identitytoken`` is returned as ``("<token>", TOKEN)``, as Docker does.
    """
    env = _env(environ)
    wanted = host.lower()
    alias = {"registry-1.docker.io", "docker.io", "index.docker.io"}
    hosts = alias if wanted in alias else {wanted}
    for path in auth_files(env):
        data = _read_json_file(path)
        if not isinstance(data, dict):
            continue
        helpers = data.get("credHelpers")
        if isinstance(helpers, dict):
            for key, name in helpers.items():
                if _key_host(str(key)) in hosts and isinstance(name, str):
                    return _helper(name, host, env)
        auths = data.get("auths")
        if isinstance(auths, dict):
            for key, entry in auths.items():
                if _key_host(str(key)) not in hosts or not isinstance(entry, dict):
                    continue
                if isinstance(entry.get("identitytoken"), str) and entry["identitytoken"]:
                    return "<token>", entry["identitytoken"]
                if isinstance(entry.get("auth"), str) and entry["auth"]:
                    try:
                        decoded = base64.b64decode(entry["auth"], validate=True).decode("utf-8")
                    except (ValueError, UnicodeDecodeError):
                        raise VenvoyError(f"{path}: the auth entry for {key} is not base64 of "
                                          "user:password", f"log in again (`podman login {host}`)"
                                          ) from None
                    user, sep, password = decoded.partition(":")
                    if not sep:
                        raise VenvoyError(f"{path}: the auth entry for {key} has no ':'",
                                          f"log in again (`podman login {host}`)")
                    return user, password
                if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
                    return entry["username"], entry["password"]
        store = data.get("credsStore")
        if isinstance(store, str) and store and isinstance(auths, dict) and any(
                _key_host(str(k)) in hosts for k in auths):
            return _helper(store, host, env)
    return None


def ca_file(environ: Mapping[str, str] | None = None) -> str | None:
    """The CA bundle to trust: ``SSL_CERT_FILE``, ``REQUESTS_CA_BUNDLE``, else None (the system's)."""
    env = _env(environ)
    for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        value = env.get(var)
        if value and os.path.isfile(value):
            return value
    return None


def cert_dirs(host: str, environ: Mapping[str, str] | None = None) -> list[Path]:
    """The per-registry CA directories Docker and Podman read (``certs.d/HOST[:PORT]``)."""
    env = _env(environ)
    config_home = Path(env.get("XDG_CONFIG_HOME") or _home(env) / ".config")
    return [Path("/etc/docker/certs.d") / host, Path("/etc/containers/certs.d") / host,
            config_home / "containers" / "certs.d" / host]


def ssl_context(host: str, environ: Mapping[str, str] | None = None) -> ssl.SSLContext:
    """A verifying TLS context for ``host``: the CA bundle plus its certs.d directories."""
    context = ssl.create_default_context(cafile=ca_file(environ))
    for directory in cert_dirs(host, environ):
        with contextlib.suppress(OSError):
            for item in sorted(directory.iterdir()):
                if item.suffix == ".crt" and item.is_file():
                    with contextlib.suppress(ssl.SSLError, OSError):
                        context.load_verify_locations(cafile=str(item))
    return context


def _no_proxy(host: str, port: int, env: Mapping[str, str]) -> bool:
    value = env.get("NO_PROXY", env.get("no_proxy", ""))
    name = host.strip("[]").lower()
    for item in (x.strip().lower() for x in value.split(",")):
        if not item:
            continue
        if item == "*":
            return True
        item_host, _, item_port = item.rpartition(":") if re.search(r":\d+$", item) else (item, "", "")
        if item_port and item_port != str(port):
            continue
        item_host = item_host.lstrip(".").strip("[]")
        if name == item_host or name.endswith("." + item_host):
            return True
    return False


def proxy_for(scheme: str, host: str, port: int,
              environ: Mapping[str, str] | None = None) -> tuple[str, int] | None:
    """(host, port) of the proxy to go through, from ``*_PROXY`` and ``NO_PROXY``."""
    found = _proxy(scheme, host, port, environ)
    return found[:2] if found is not None else None


def _proxy(scheme: str, host: str, port: int,
           environ: Mapping[str, str] | None) -> tuple[str, int, dict[str, str]] | None:
    """(host, port, headers): ``Proxy-Authorization`` from ``http://user:pass@proxy:port``."""
    env = _env(environ)
    names = ("HTTPS_PROXY", "https_proxy") if scheme == "https" else ("HTTP_PROXY", "http_proxy")
    value = next((env[n] for n in (*names, "ALL_PROXY", "all_proxy") if env.get(n)), "")
    if not value or _no_proxy(host, port, env):
        return None
    if "://" not in value:
        value = "http://" + value
    parts = urllib.parse.urlsplit(value)
    if not parts.hostname:
        raise VenvoyError(f"bad proxy setting {value[:120]!r}", "set HTTPS_PROXY=http://HOST:PORT")
    try:
        proxy_port = parts.port or 80
    except ValueError:
        raise VenvoyError(f"bad proxy port in {value[:120]!r}", "set HTTPS_PROXY=http://HOST:PORT") from None
    headers = {}
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(
            f"{user}:{password}".encode()).decode()
    return parts.hostname, proxy_port, headers


def timeout_default(environ: Mapping[str, str] | None = None) -> float:
    """Seconds to wait for any answer (``VENVOY_REGISTRY_TIMEOUT``, default 30)."""
    text = _env(environ).get("VENVOY_REGISTRY_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 86400:
        raise VenvoyError(f"VENVOY_REGISTRY_TIMEOUT={text!r} is not a number of seconds",
                          "set it to e.g. 60, or unset it")
    return value


def _insecure(host: str, env: Mapping[str, str]) -> bool:
    listed = {x.strip().lower() for x in env.get("VENVOY_INSECURE_REGISTRIES", "").split(",")}
    return host.lower() in listed


# -- HTTP ------------------------------------------------------------------------------------

class _Response:
    """An HTTP answer whose body is still to be read (with a bound)."""

    def __init__(self, session: Session, conn: http.client.HTTPConnection,
                 resp: http.client.HTTPResponse, url: str) -> None:
        self.session = session
        self.conn = conn
        self.resp = resp
        self.status = resp.status
        self.url = url

    def header(self, name: str) -> str:
        return self.resp.getheader(name) or ""

    def read(self, limit: int, what: str) -> bytes:
        length = self.resp.getheader("Content-Length")
        if length and length.isdigit() and int(length) > limit:
            raise DamagedError(f"registry answer for {what} is {int(length)} bytes, more than "
                               f"{limit} allowed", "is this really an OCI registry?")
        # Piece by piece under one deadline: a server that trickles a byte at a time
        # (each within the timeout) must not hold venvoy forever.
        deadline = time.monotonic() + max(4 * self.session.timeout, SMALL_READ_SECONDS)
        data = bytearray()
        try:
            while len(data) <= limit:
                chunk = self.resp.read1(min(_CHUNK, limit + 1 - len(data)))
                if not chunk:
                    break
                data += chunk
                if time.monotonic() > deadline and len(data) <= limit:
                    raise TimeoutError
        except (OSError, http.client.HTTPException) as exc:
            raise self.session.network_error(exc, urllib.parse.urlsplit(self.url).hostname or "?",
                                              0) from None
        if len(data) > limit:
            raise DamagedError(f"registry answer for {what} is larger than {limit} bytes",
                               "is this really an OCI registry?")
        return bytes(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.resp.close()
        with contextlib.suppress(Exception):
            self.conn.close()


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="x",service="y"`` -> ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
              for m in re.finditer(r'([A-Za-z_]+)\s*=\s*(?:"([^"]*)"|([^\s,]*))', rest)}
    return scheme.lower(), params


@dataclass
class Session:
    """Connections to one registry for one repository: auth state, TLS, proxy, timeout."""

    ref: Reference
    environ: Mapping[str, str]
    timeout: float
    push: bool = False
    _auth: str | None = None  # the Authorization header that worked
    _creds: tuple[str, str] | bool | None = False  # False: not looked up yet
    _contexts: dict[str, ssl.SSLContext] = field(default_factory=dict)
    _tokens: dict[str, str] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        return "http" if _insecure(self.ref.host, self.environ) else "https"

    def base_url(self) -> str:
        return f"{self.scheme}://{self.ref.api_host}/v2/{self.ref.repository}"

    def creds(self) -> tuple[str, str] | None:
        if self._creds is False:
            self._creds = credentials(self.ref.api_host, self.environ) or (
                credentials(self.ref.host, self.environ) if self.ref.host != self.ref.api_host else None)
        return self._creds if isinstance(self._creds, tuple) else None

    # -- raw connections --

    def _connect(self, scheme: str, host: str, port: int) -> http.client.HTTPConnection:
        proxy = _proxy(scheme, host, port, self.environ)
        conn: http.client.HTTPConnection
        if scheme == "https":
            key = f"{host}:{port}" if port != 443 else host
            context = self._contexts.get(key)
            if context is None:
                context = self._contexts[key] = ssl_context(key, self.environ)
            if proxy:
                conn = http.client.HTTPSConnection(proxy[0], proxy[1], timeout=self.timeout,
                                                   context=context, blocksize=_BLOCKSIZE)
                conn.set_tunnel(host, port, headers=proxy[2] or None)
            else:
                conn = http.client.HTTPSConnection(host, port, timeout=self.timeout, context=context,
                                                   blocksize=_BLOCKSIZE)
        elif proxy:
            conn = http.client.HTTPConnection(proxy[0], proxy[1], timeout=self.timeout,
                                              blocksize=_BLOCKSIZE)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.timeout, blocksize=_BLOCKSIZE)
        return conn

    def _raw(self, method: str, url: str, headers: dict[str, str], body: Any = None) -> _Response:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DamagedError(f"registry {self.ref.host} sent a bad URL {url[:120]!r}",
                               "is this really an OCI registry?")
        host = parts.hostname
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise DamagedError(f"registry {self.ref.host} sent a bad URL {url[:120]!r}",
                               "is this really an OCI registry?") from None
        conn = self._connect(parts.scheme, host, port)
        proxied = _proxy("http", host, port, self.environ) if parts.scheme == "http" else None
        target = url if proxied else (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"User-Agent": "venvoy", **(proxied[2] if proxied else {}), **headers}
        try:
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
        except BaseException as exc:
            conn.close()
            raise self.network_error(exc, host, port) from None
        return _Response(self, conn, resp, url)

    def network_error(self, exc: BaseException, host: str, port: int) -> BaseException:
        """The one line for a failed connection, TLS handshake or read."""
        where = f"registry {host}:{port}" if port else f"registry {host}"
        if isinstance(exc, ssl.SSLCertVerificationError):
            return VenvoyError(
                f"cannot verify the TLS certificate of {where} ({exc.verify_message or exc})",
                f"set SSL_CERT_FILE to the CA bundle that signed it, or put the CA in "
                f"/etc/containers/certs.d/{self.ref.host}/ca.crt")
        if isinstance(exc, ssl.SSLError):
            return VenvoyError(f"TLS with {where} failed ({exc.reason or exc})",
                               "is it an HTTPS registry? a plain-HTTP one must be listed in "
                               "VENVOY_INSECURE_REGISTRIES")
        if isinstance(exc, (TimeoutError, socket.timeout)):
            return VenvoyError(f"{where} did not answer within {self.timeout:.0f} s",
                               "check the network and proxy (HTTPS_PROXY), or wait longer with "
                               "VENVOY_REGISTRY_TIMEOUT")
        if isinstance(exc, socket.gaierror):
            return VenvoyError(f"cannot reach {where}: unknown host",
                               "check the registry name, DNS, or set HTTPS_PROXY")
        if isinstance(exc, (ConnectionError, http.client.HTTPException, OSError)):
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            # the server's own words (a bad status line): one printable line, bounded
            reason = "".join(c for c in " ".join(str(reason).split()) if c.isprintable())[:160]
            if isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED:
                reason = "connection refused"
            return VenvoyError(f"cannot reach {where}: {reason}",
                               "check the address and that the registry runs; set HTTPS_PROXY if "
                               "it is reachable only through a proxy")
        return exc

    # -- auth --

    def _scope(self) -> str:
        return f"repository:{self.ref.repository}:{'pull,push' if self.push else 'pull'}"

    def _authorize(self, challenge: str) -> bool:
        """Answer a 401 challenge; True if there is something new to try."""
        scheme, params = _challenge(challenge)
        creds = self.creds()
        if scheme == "basic":
            if creds is None or self._auth is not None:
                return False
            user, password = creds
            self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            return True
        if scheme == "bearer" and params.get("realm"):
            scope = params.get("scope") or self._scope()
            if self.push and ":push" not in scope and "push" not in scope.rsplit(":", 1)[-1]:
                scope = self._scope()
            key = f"{params.get('realm')} {scope}"
            if key in self._tokens and self._auth == f"Bearer {self._tokens[key]}":
                return False
            token = self._token(params["realm"], params.get("service"), scope, creds)
            self._tokens[key] = token
            self._auth = f"Bearer {token}"
            return True
        return False

    def _token(self, realm: str, service: str | None, scope: str,
               creds: tuple[str, str] | None) -> str:
        parts = urllib.parse.urlsplit(realm)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise DamagedError(f"registry {self.ref.host} names a bad token realm {realm[:120]!r}",
                               "is this really an OCI registry?")
        if parts.scheme == "http" and not _insecure(parts.netloc, self.environ):
            raise VenvoyError(f"registry {self.ref.host} asks to send credentials over plain "
                              f"HTTP to {parts.netloc}", "list it in VENVOY_INSECURE_REGISTRIES "
                              "only if you trust the network")
        query = [("scope", scope)]
        if service:
            query.insert(0, ("service", service))
        url = realm + ("&" if parts.query else "?") + urllib.parse.urlencode(query)
        headers = {}
        if creds is not None:
            user, password = creds
            headers["Authorization"] = "Basic " + base64.b64encode(
                f"{user}:{password}".encode()).decode()
        resp = self._raw("GET", url, headers)
        try:
            body = resp.read(MAX_SMALL, "a token")
        finally:
            resp.close()
        if resp.status in (401, 403):
            raise self._denied(resp.status)
        if resp.status != 200:
            raise VenvoyError(f"the token service of {self.ref.host} answered {resp.status}",
                              "try again later; check the registry's status")
        try:
            data = json.loads(body)
            token = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError, RecursionError):
            token = None
        if not isinstance(token, str) or not token or len(token) > 16384 or not token.isascii() \
                or any(c.isspace() for c in token):
            raise DamagedError(f"the token service of {self.ref.host} sent no usable token",
                               "is this really an OCI registry?")
        return token

    def _denied(self, status: int) -> VenvoyError:
        what = "push to" if self.push else "pull"
        if self.creds() is None:
            return VenvoyError(f"registry {self.ref.host} wants credentials to {what} "
                               f"{self.ref.repository} ({status})",
                               f"log in with `podman login {self.ref.host}` or `docker login "
                               f"{self.ref.host}` (venvoy reads their auth files, or "
                               "REGISTRY_AUTH_FILE)")
        return VenvoyError(f"registry {self.ref.host} refused the credentials to {what} "
                           f"{self.ref.repository} ({status})",
                           f"check the user and password: log in again with `podman login "
                           f"{self.ref.host}`, and check your rights on the repository")

    # -- requests --

    def request(self, method: str, url: str, headers: dict[str, str] | None = None,
                body: Callable[[], Any] | None = None, *, follow: bool = True) -> _Response:
        """One request with auth, retries (5xx, 429) and redirects; the caller closes it."""
        headers = dict(headers or {})
        def where(address: str) -> tuple[str, str]:  # https -> http is another place
            parts = urllib.parse.urlsplit(address)
            return parts.scheme, parts.netloc

        origin = where(url)
        redirects = 0
        attempt = 0
        tried_auth = 0
        while True:
            send = dict(headers)
            if self._auth and where(url) == origin:
                send["Authorization"] = self._auth
            resp = self._raw(method, url, send, body() if body is not None else None)
            if resp.status == 401 and where(url) == origin and tried_auth < 2:
                challenge = resp.header("WWW-Authenticate")
                resp.close()
                tried_auth += 1
                if challenge and self._authorize(challenge):
                    continue
                raise self._denied(401)
            if resp.status == 401:
                resp.close()
                raise self._denied(401)
            if resp.status in (500, 502, 503, 504, 429) and attempt + 1 < ATTEMPTS:
                resp.close()
                attempt += 1
                time.sleep(_backoff(resp, attempt))
                continue
            if follow and resp.status in (301, 302, 303, 307, 308):
                location = resp.header("Location")
                resp.close()
                redirects += 1
                if not location or redirects > MAX_REDIRECTS:
                    raise DamagedError(f"registry {self.ref.host} redirects without end",
                                       "is this really an OCI registry?")
                url = urllib.parse.urljoin(url, location)
                if resp.status == 303:
                    method, body = "GET", None
                continue
            return resp

    def fail(self, resp: _Response, what: str) -> VenvoyError:
        """The one line for an unexpected status."""
        status = resp.status
        detail = ""
        with contextlib.suppress(Exception):
            data = json.loads(resp.read(MAX_SMALL, what))
            errors = data.get("errors") if isinstance(data, dict) else None
            if isinstance(errors, list) and errors and isinstance(errors[0], dict):
                detail = " ".join(str(errors[0].get("message") or errors[0].get("code") or "").split())
        resp.close()
        detail = "".join(c for c in detail if c.isprintable())[:160]
        suffix = f": {detail}" if detail else ""
        if status == 404:
            return NotFound(f"{what} not found in registry {self.ref.host} (404{suffix})",
                            "check the repository name and tag (no such repository or tag)")
        if status == 403:
            return self._denied(403)
        if status == 429:
            return VenvoyError(f"registry {self.ref.host} is rate-limiting us (429) for {what}",
                               "wait and try again, or log in for a higher limit")
        if status >= 500:
            return VenvoyError(f"registry {self.ref.host} failed ({status}{suffix}) for {what}",
                               "try again later; check the registry's status")
        return VenvoyError(f"registry {self.ref.host} answered {status}{suffix} for {what}",
                           "check the reference; is this an OCI registry?")


def _backoff(resp: _Response, attempt: int) -> float:
    retry = resp.header("Retry-After")
    if retry.isdigit():
        return min(float(retry), 10.0)
    return float(min(0.5 * 2.0 ** (attempt - 1), 4.0))


def session(ref: Reference, *, environ: Mapping[str, str] | None = None,
            timeout: float | None = None, push: bool = False) -> Session:
    env = dict(_env(environ))
    return Session(ref, env, timeout if timeout is not None else timeout_default(env), push)


# -- manifests -----------------------------------------------------------------------------

def _loads(raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise DamagedError(f"{what} is not valid JSON", "is this really an OCI registry?") from None


def _digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _check_digest(value: object, what: str) -> str:
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise DamagedError(f"{what} names a digest that is not sha256:<64 hex> ({str(value)[:80]!r})",
                           "venvoy reads sha256 images only")
    return value


def fetch_manifest(sess: Session, reference: str) -> tuple[bytes, str, str]:
    """(bytes, media type, digest) of a manifest or index, checked against a pinned digest."""
    what = f"{sess.ref.host}/{sess.ref.repository}:{reference}" if not reference.startswith(
        "sha256:") else f"{sess.ref.host}/{sess.ref.repository}@{reference}"
    resp = sess.request("GET", f"{sess.base_url()}/manifests/{reference}",
                        {"Accept": ", ".join(MANIFEST_TYPES)})
    try:
        if resp.status != 200:
            raise sess.fail(resp, what)
        raw = resp.read(MAX_MANIFEST, what)
        media = resp.header("Content-Type").split(";")[0].strip()
    finally:
        resp.close()
    digest = _digest_of(raw)
    if reference.startswith("sha256:") and digest != reference:
        raise DamagedError(f"the manifest of {what} does not match its digest (it is {digest})",
                           "the registry or a proxy altered it: do not use it")
    data = _loads(raw, f"the manifest of {what}")
    if not isinstance(data, dict):
        raise DamagedError(f"the manifest of {what} is not a JSON object",
                           "is this really an OCI registry?")
    media = str(data.get("mediaType") or media)
    if media not in MANIFEST_TYPES:
        if "manifests" in data:
            media = OCI_INDEX
        elif "layers" in data and "config" in data:
            media = OCI_MANIFEST
        else:
            raise DamagedError(f"{what} is a {media[:80]!r}, not an image venvoy reads",
                               "push a Docker v2 or OCI image")
    return raw, media, digest


def _image_manifest(sess: Session) -> tuple[dict[str, Any], str, str]:
    """The image manifest for this host (an index resolved by the platform rule),
    its digest, and the digest the reference resolved to first."""
    from venvoy.image.oci import pick_platform

    raw, media, digest = fetch_manifest(sess, sess.ref.reference)
    top = digest
    for _depth in range(4):
        data = _loads(raw, "manifest")
        if media not in INDEX_TYPES:
            return data, digest, top
        entries = data.get("manifests")
        if not isinstance(entries, list) or not entries:
            raise DamagedError(f"the index of {sess.ref} lists no image", "push an image to it")
        candidates: list[tuple[Any, dict[str, Any]]] = [
            (e, e["platform"] if isinstance(e.get("platform"), dict) else {})
            for e in entries if isinstance(e, dict)]
        chosen = pick_platform(candidates, str(sess.ref))
        child = _check_digest(chosen.get("digest"), f"the index of {sess.ref}")
        raw, media, digest = fetch_manifest(sess, child)
    raise DamagedError(f"the indexes of {sess.ref} nest too deep", "is this really an OCI registry?")


def resolve(ref: Reference, *, environ: Mapping[str, str] | None = None,
            timeout: float | None = None) -> str:
    """The digest of the image manifest for this host that ``ref`` names now.

    A tag is looked up every time, so a moved tag is noticed (the digest
    changes); an index is resolved by :func:`venvoy.image.oci.pick_platform`.
    """
    sess = session(ref, environ=environ, timeout=timeout)
    _manifest, digest, _top = _image_manifest(sess)
    return digest


# -- blobs -----------------------------------------------------------------------------------

def _max_blob(env: Mapping[str, str]) -> int:
    text = env.get("VENVOY_REGISTRY_MAX_BLOB", "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else MAX_BLOB


def fetch_blob(sess: Session, digest: str, out: IO[bytes], *, size: int | None,
               progress: Progress = _quiet) -> None:
    """Stream a blob into ``out``, checking its size bound and its sha256."""
    limit = _max_blob(sess.environ)
    if size is not None and size > limit:
        raise DamagedError(f"a blob of {sess.ref} would be {size} bytes, more than {limit}",
                           "raise VENVOY_REGISTRY_MAX_BLOB if that is expected")
    resp = sess.request("GET", f"{sess.base_url()}/blobs/{digest}")
    try:
        if resp.status != 200:
            raise sess.fail(resp, f"blob {digest[:19]} of {sess.ref}")
        hasher = hashlib.sha256()
        got = 0
        bound = size if size is not None else limit
        while True:
            try:
                chunk = resp.resp.read(_CHUNK)
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                host = urllib.parse.urlsplit(resp.url).hostname or sess.ref.host
                raise sess.network_error(exc, host, 0) from None
            if not chunk:
                break
            got += len(chunk)
            if got > bound:
                raise DamagedError(f"blob {digest[:19]} of {sess.ref} is larger than announced",
                                   "the registry sent more than the manifest says: do not use it")
            hasher.update(chunk)
            out.write(chunk)
    finally:
        resp.close()
    if size is not None and got != size:
        raise DamagedError(f"blob {digest[:19]} of {sess.ref} is {got} bytes, not {size}",
                           "the download was cut short or altered: try again")
    if "sha256:" + hasher.hexdigest() != digest:
        raise DamagedError(f"blob {digest[:19]} of {sess.ref} does not match its digest",
                           "the registry or a proxy altered it: do not use it")


@dataclass(frozen=True)
class PulledImage:
    """What :func:`pull_archive` wrote."""

    path: Path  # a Docker archive (uncompressed layers), as image.oci writes
    manifest_digest: str  # the image manifest's digest (for this host's platform)
    image_id: str  # the config's digest = the Docker image ID
    annotations: dict[str, str] = field(default_factory=dict)  # the manifest's annotations


def _descriptor(value: Any, what: str) -> tuple[str, int]:
    if not isinstance(value, dict):
        raise DamagedError(f"{what} is not a descriptor", "is this really an OCI image?")
    digest = _check_digest(value.get("digest"), what)
    size = value.get("size")
    if type(size) is not int or size < 0:
        raise DamagedError(f"{what} has no valid size", "is this really an OCI image?")
    return digest, size


def pull_archive(ref: Reference, dest: Path, *, environ: Mapping[str, str] | None = None,
                 progress: Progress | None = None) -> PulledImage:
    """Pull ``ref`` (this host's platform) and write it as a Docker archive at ``dest``.

    Every blob is checked against its digest before use; the archive is
    written under a temporary name beside ``dest`` and renamed, so ``dest`` is
    either the complete image or absent. The image ID is the config's digest.
    """
    from venvoy.image.oci import copy_as_docker_archive

    say = progress or _quiet
    dest = Path(dest)
    sess = session(ref, environ=environ)
    say(f"resolving {ref}")
    manifest, digest, _top = _image_manifest(sess)
    config_digest, config_size = _descriptor(manifest.get("config"), f"the config of {ref}")
    if config_size > MAX_MANIFEST:
        raise DamagedError(f"the config of {ref} is {config_size} bytes", "is this really an image?")
    layers = manifest.get("layers")
    if not isinstance(layers, list) or len(layers) > 1000:
        raise DamagedError(f"the manifest of {ref} has no valid layer list",
                           "is this really an OCI image?")
    descs = [_descriptor(layer, f"layer {i + 1} of {ref}") for i, layer in enumerate(layers)]
    annotations = manifest.get("annotations")
    notes = {str(k): str(v) for k, v in annotations.items()} if isinstance(annotations, dict) else {}
    dest.parent.mkdir(parents=True, exist_ok=True)
    from venvoy.core.fs import TMP_PREFIX, temp_name

    work = dest.with_name(temp_name(f"{TMP_PREFIX}pull-{dest.name[:60]}"))
    work.mkdir(mode=0o700)
    try:
        blobs = work / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        todo = [(config_digest, config_size)] + [d for d in descs if d[0] != config_digest]
        seen: set[str] = set()
        total = sum(size for _d, size in todo)
        for i, (blob, size) in enumerate(todo):
            if blob in seen:
                continue
            seen.add(blob)
            if i:
                say(f"pulling layer {i}/{len(todo) - 1} ({size >> 20} MiB of {total >> 20} MiB)")
            with open(blobs / blob.partition(":")[2], "wb") as fh:
                fetch_blob(sess, blob, fh, size=size)
        oci_manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                        "config": {"mediaType": OCI_CONFIG, "digest": config_digest,
                                   "size": config_size},
                        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": d, "size": s}
                                   for d, s in descs]}
        man_raw = json.dumps(oci_manifest, sort_keys=True).encode()
        man_digest = _digest_of(man_raw)
        (blobs / man_digest.partition(":")[2]).write_bytes(man_raw)
        index = {"schemaVersion": 2, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": man_digest, "size": len(man_raw)}]}
        layout = work / "layout.tar"
        with tarfile.open(layout, "w", format=tarfile.GNU_FORMAT) as tar:
            for name, data in (("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                               ("index.json", json.dumps(index).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, _bytes_io(data))
            for item in sorted(blobs.iterdir()):
                tar.add(item, arcname=f"blobs/sha256/{item.name}", recursive=False)
        for item in blobs.iterdir():
            if item.name != man_digest.partition(":")[2]:
                item.unlink()
        say("writing the image archive")
        written = copy_as_docker_archive(layout, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if written.image_id != config_digest:
        dest.unlink(missing_ok=True)
        raise DamagedError(f"the image of {ref} is not what its manifest names",
                           "the registry sent an altered image: do not use it")
    return PulledImage(dest, digest, written.image_id, notes)


def _bytes_io(data: bytes) -> IO[bytes]:
    import io

    return io.BytesIO(data)


# -- push ------------------------------------------------------------------------------------

def _blob_exists(sess: Session, digest: str) -> bool:
    resp = sess.request("HEAD", f"{sess.base_url()}/blobs/{digest}")
    resp.close()
    if resp.status == 200:
        return True
    if resp.status == 404:
        return False
    raise sess.fail(resp, f"blob {digest[:19]} of {sess.ref}")


def _upload(sess: Session, path: Path, digest: str, size: int) -> None:
    resp = sess.request("POST", f"{sess.base_url()}/blobs/uploads/", {"Content-Length": "0"},
                        body=lambda: b"", follow=False)
    if resp.status != 202:
        raise sess.fail(resp, f"an upload to {sess.ref.host}/{sess.ref.repository}")
    location = resp.header("Location")
    resp.close()
    if not location:
        raise DamagedError(f"registry {sess.ref.host} started an upload without a Location",
                           "is this really an OCI registry?")
    url = urllib.parse.urljoin(f"{sess.base_url()}/blobs/uploads/", location)
    parts = urllib.parse.urlsplit(url)
    query = [*urllib.parse.parse_qsl(parts.query, keep_blank_values=True), ("digest", digest)]
    url = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
    with contextlib.ExitStack() as stack:
        handles: list[IO[bytes]] = []

        def body() -> IO[bytes]:
            fh = stack.enter_context(open(path, "rb"))
            handles.append(fh)
            return fh

        resp = sess.request("PUT", url, {"Content-Type": "application/octet-stream",
                                         "Content-Length": str(size)}, body=body, follow=False)
    if resp.status not in (201, 204):
        raise sess.fail(resp, f"the upload of blob {digest[:19]}")
    resp.close()


def _gzip_layer(stream: IO[bytes], out: Path) -> tuple[str, int]:
    """Gzip ``stream`` reproducibly (no name, mtime 0) to ``out``; (digest, size)."""
    with open(out, "wb") as raw:
        hasher = _HashingFile(raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=hasher,
                           compresslevel=_GZIP_LEVEL, mtime=0) as gz:
            while chunk := stream.read(_CHUNK):
                gz.write(chunk)
    return "sha256:" + hasher.hash.hexdigest(), hasher.size


class _HashingFile:
    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


def push_archive(archive: Path, ref: Reference, *, environ: Mapping[str, str] | None = None,
                 progress: Progress | None = None,
                 annotations: Mapping[str, str] | None = None) -> str:
    """Push the image of a Docker or OCI archive to ``ref``; returns the manifest digest.

    Layers are pushed gzip-compressed (reproducibly), blobs the registry has
    are skipped (HEAD), and an OCI image manifest with ``annotations`` is put
    under the tag (or checked against the digest given in ``ref``). The config
    is pushed byte for byte, so the image ID is the archive's.
    """
    from venvoy.image.oci import layer_stream, open_archive, read_source

    say = progress or _quiet
    archive = Path(archive)
    if ref.digest and not ref.tag:
        raise BadRequest(f"push to {ref}: give a tag, not only a digest", "e.g. HOST/REPO:v1")
    sess = session(ref, environ=environ, push=True)
    notes = dict(annotations or {})
    for key, value in notes.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise BadRequest("image annotations must be text")
    from venvoy.core.fs import TMP_PREFIX, temp_name

    work = archive.parent / temp_name(f"{TMP_PREFIX}push")
    try:
        work.mkdir(mode=0o700)
    except OSError:
        import tempfile

        work = Path(tempfile.mkdtemp(prefix="venvoy-push-"))
    try:
        with open_archive(archive) as tar:
            source = read_source(tar, archive)
            layers: list[dict[str, Any]] = []
            for i, name in enumerate(source.layers):
                say(f"compressing layer {i + 1}/{len(source.layers)}")
                out = work / f"layer{i}.tar.gz"
                with layer_stream(tar, name, archive) as stream:
                    digest, size = _gzip_layer(stream, out)
                layers.append({"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": size})
                if _blob_exists(sess, digest):
                    say(f"layer {i + 1}/{len(source.layers)} is already in {ref.host}")
                else:
                    say(f"pushing layer {i + 1}/{len(source.layers)} ({size >> 20} MiB)")
                    _upload(sess, out, digest, size)
                out.unlink()
        config = source.config_bytes
        config_digest = _digest_of(config)
        if not _blob_exists(sess, config_digest):
            (work / "config.json").write_bytes(config)
            _upload(sess, work / "config.json", config_digest, len(config))
        manifest: dict[str, Any] = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": layers}
        if notes:
            manifest["annotations"] = notes
        raw = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        if len(raw) > MAX_MANIFEST:
            raise BadRequest(f"the manifest for {ref} would be {len(raw)} bytes",
                             "annotations too large")
        digest = _digest_of(raw)
        if ref.digest and ref.digest != digest:
            raise BadRequest(f"push to {ref}: the image's manifest digest is {digest}",
                             "leave the digest out of the reference")
        say(f"pushing the manifest to {ref.canonical()}")
        resp = sess.request("PUT", f"{sess.base_url()}/manifests/{ref.tag or 'latest'}",
                            {"Content-Type": OCI_MANIFEST, "Content-Length": str(len(raw))},
                            body=lambda: raw, follow=False)
        if resp.status not in (200, 201, 202):
            raise sess.fail(resp, f"the manifest of {ref}")
        echoed = resp.header("Docker-Content-Digest")
        resp.close()
        if echoed and echoed != digest:
            raise DamagedError(f"registry {ref.host} stored the manifest as {echoed[:80]!r}, not "
                               f"{digest}", "the registry altered it")
        return digest
    finally:
        shutil.rmtree(work, ignore_errors=True)


__all__ = ["DOCKER_LIST", "DOCKER_MANIFEST", "MANIFEST_TYPES", "OCI_CONFIG", "OCI_INDEX",
           "OCI_LAYER_GZIP", "OCI_MANIFEST", "PulledImage", "Reference", "Session", "auth_files",
           "ca_file", "cert_dirs", "credentials", "fetch_blob", "fetch_manifest", "parse_reference",
           "proxy_for", "pull_archive", "push_archive", "resolve", "session", "ssl_context",
           "timeout_default"]
