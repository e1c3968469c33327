"""Environment records: ``envs/NAME/`` in the store, read and written here only.

A record is ``env.json`` (what was built, from what), ``pylock.toml`` and
``requirements.in`` beside it, and the small ``image`` file the fast path
reads. The directory is written as a whole (temp name, rename) under the
environment's lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from venvoy.core.errors import BadRequest, DamagedError, NotFound, VenvoyError
from venvoy.core.fs import TMP_PREFIX, temp_name
from venvoy.core.names import check_name
from venvoy.core.platform import LOCK_ARCHES, is_python_version
from venvoy.store.fastpath import IMAGE_FILE, RECORD_FILE, env_tag
from venvoy.store.layout import Store, digest_hex

LOCK_FILE = "pylock.toml"
REQUIREMENTS_FILE = "requirements.in"
#: Bounds on what is read from a record directory (a real one is a few KiB).
MAX_RECORD_BYTES = 1 << 20
MAX_LOCK_BYTES = 64 << 20

#: What a record's text fields may hold: printable text, so that a record from
#: an imported archive cannot forge lines in `venvoy list` or a terminal.
_MAX_TEXT = 1 << 16


def _printable(value: str, *, newlines: bool = False) -> bool:
    return all(c.isprintable() or (newlines and c == "\n") for c in value)


def _is_hex64(value: object) -> bool:
    return (isinstance(value, str) and len(value) == 64
            and all(c in "0123456789abcdef" for c in value))


def _is_created(value: object) -> bool:
    if not isinstance(value, str) or len(value) != 20 or not value.isascii():
        return False
    shape = "dddd-dd-ddTdd:dd:ddZ"
    return all(c.isdigit() if s == "d" else c == s for c, s in zip(value, shape, strict=True))


#: The one pip option a requirement line may carry: a sha256 pin of the file.
_HASH_OPTION = "--hash"


def _hash_value(value: str, where: str, error: type[VenvoyError]) -> str:
    algo, _, digest = value.partition(":")
    if algo != "sha256" or not _is_hex64(digest.lower()):
        raise error(f"{where}: {_HASH_OPTION} {value[:80]!r} is not sha256:<64 hex digits>",
                    "venvoy checks sha256 pins only; give --hash=sha256:<hex>")
    return digest.lower()


def strip_comment(line: str) -> str:
    """``line`` without its comment: ``#`` at the start or after white space
    (``#egg=`` or ``#sha256=`` inside a URL is kept)."""
    for i, c in enumerate(line):
        if c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line


def split_requirement(line: str, where: str = "requirement",
                      error: type[VenvoyError] = BadRequest) -> tuple[str, list[str]]:
    """One requirement line as (the requirement, its ``--hash=sha256:`` pins).

    Any other option (``--index-url``, ``-e``, ``-r``, ``--config-settings``
    ...) would change where packages come from or how they are built, so it is
    refused, whether it starts the line or follows a requirement.
    """
    tokens = strip_comment(line).split()
    head: list[str] = []
    pins: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        option, eq, value = token.partition("=")
        if option == _HASH_OPTION:
            if not eq:
                i += 1
                value = tokens[i] if i < len(tokens) else ""
            pins.append(_hash_value(value, where, error))
        elif token.startswith("-"):
            raise error(f"{where}: options such as {option[:40]!r} are not supported in "
                        "requirements", "list the requirements themselves (--hash=sha256: pins "
                        "are the one option allowed)")
        elif pins:
            raise error(f"{where}: {token[:40]!r} follows a --hash pin",
                        "put the --hash pins at the end of the line")
        else:
            head.append(token)
        i += 1
    if pins and not head:
        raise error(f"{where}: a --hash pin without a requirement", "put it after the requirement")
    return " ".join(head), pins


def check_requirement_lines(text: str, where: str,
                            error: type[VenvoyError] = BadRequest) -> str:
    """Requirement lines as venvoy stores them: one requirement a line, no pip
    options (``--index-url``, ``-e``, ``-r`` would change where packages come
    from) except sha256 ``--hash`` pins, no control characters. The one check
    for ``init -r`` files, the library's package lists and every record read
    (imported or not). Returns ``text``; raises ``error`` naming the line."""
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines: \x1c is no line end
        here = f"{where}:{number}"
        if not _printable(line.replace("\t", " ")):
            raise error(f"{here}: a requirement holds control characters", "remove them")
        if line.rstrip().endswith("\\"):  # a continuation would join lines behind this check
            raise error(f"{here}: a requirement ends with a line continuation",
                        "write each requirement on one line")
        split_requirement(line, here, error)
    return text


@dataclass(frozen=True)
class EnvRecord:
    """``env.json``: what an environment is and what it was built from.

    Every field is checked when the record is read (from the store or from an
    imported archive): a damaged or forged record is one clear error, never a
    traceback or a forged line of output.
    """

    name: str
    python: str
    identity: str
    image_id: str
    lock_hash: str
    created: str
    requirements: str = ""
    base: str | None = None
    base_source: str = ""
    base_image_id: str = ""
    glibc: str = ""
    arch: str = ""
    inputs: str = ""
    built_with: str = ""
    packages: int = 0
    venvoy_version: str = ""
    recipe: str = ""
    #: For an imported environment: {"file", "name", "at"} of the archive it came from.
    imported_from: dict[str, str] | None = None

    @classmethod
    def from_dict(cls, data: object, where: str, hint: str) -> EnvRecord:
        """Check and type ``data``; raise :class:`DamagedError` naming the bad field."""

        def bad(what: str) -> DamagedError:
            return DamagedError(f"{where} is damaged: {what}", hint)

        if not isinstance(data, dict):
            raise bad("not a JSON object")
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key in known:
                values[key] = value
        for key in ("name", "python", "identity", "image_id", "lock_hash", "created"):
            if key not in values:
                raise bad(f"{key!r} is missing")
        name = values["name"]
        if not isinstance(name, str):
            raise bad("'name' is not text")
        try:
            check_name(name)
        except VenvoyError:
            raise bad(f"'name' {name[:80]!r} is not a valid environment name") from None
        if not is_python_version(values["python"]):
            raise bad(f"'python' {str(values['python'])[:20]!r} is not a version like 3.11")
        for key in ("identity", "lock_hash"):
            if not _is_hex64(values[key]):
                raise bad(f"{key!r} is not a sha256 hex digest")
        image_id = values["image_id"]
        if not (isinstance(image_id, str) and image_id.startswith("sha256:")
                and _is_hex64(image_id[7:])):
            raise bad("'image_id' is not sha256:<64 hex digits>")
        if not _is_created(values["created"]):
            raise bad("'created' is not a time like 2026-01-31T12:00:00Z")
        base_image_id = values.get("base_image_id", "")
        if base_image_id and not (isinstance(base_image_id, str)
                                  and base_image_id.startswith("sha256:")
                                  and _is_hex64(base_image_id[7:])):
            raise bad("'base_image_id' is not sha256:<64 hex digits>")
        if values.get("inputs") and not _is_hex64(values["inputs"]):
            raise bad("'inputs' is not a sha256 hex digest")
        packages = values.get("packages", 0)
        if not isinstance(packages, int) or isinstance(packages, bool) or not 0 <= packages < 10**6:
            raise bad("'packages' is not a count")
        if values.get("base") is not None and not isinstance(values["base"], str):
            raise bad("'base' is not text")
        for key in ("requirements", "base", "base_source", "glibc", "arch", "built_with",
                    "venvoy_version", "recipe"):
            value = values.get(key)
            if value is None:
                values.pop(key, None)
                continue
            if not isinstance(value, str) or len(value) > _MAX_TEXT:
                raise bad(f"{key!r} is not text (or is too long)")
            if not _printable(value.replace("\t", " ") if key == "requirements" else value,
                              newlines=key == "requirements"):
                raise bad(f"{key!r} holds control characters")
        glibc = values.get("glibc") or ""
        if glibc and not (isinstance(glibc, str) and glibc.startswith("2.") and glibc[2:].isdigit()
                          and len(glibc) <= 6):
            raise bad("'glibc' is not a version like 2.36")
        version = values.get("venvoy_version") or ""
        if version and not (isinstance(version, str) and len(version) <= 64 and version.isascii()
                            and version[0].isalnum()
                            and all(c.isalnum() or c in ".+_-" for c in version)):
            raise bad("'venvoy_version' is not a version")
        if values.get("arch") and values["arch"] not in LOCK_ARCHES:
            raise bad(f"'arch' is not one of {', '.join(LOCK_ARCHES)}")
        imported = values.get("imported_from")
        if imported is not None and not (
                isinstance(imported, dict) and len(imported) <= 8
                and all(isinstance(k, str) and isinstance(v, str) and len(v) <= 4096
                        and _printable(k) and _printable(v) for k, v in imported.items())):
            raise bad("'imported_from' is not a small map of text")
        try:
            check_requirement_lines(values.get("requirements", ""), "'requirements'",
                                    DamagedError)
        except DamagedError as exc:
            raise bad(exc.message) from None
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if out["imported_from"] is None:
            del out["imported_from"]
        return out


class Environment:
    """An environment in the store: its checked record and where its files are."""

    def __init__(self, store: Store, record: EnvRecord) -> None:
        self.store = store
        self.record = record

    @property
    def data(self) -> dict[str, Any]:
        """The record as plain data (what ``env.json`` holds)."""
        return self.record.to_dict()

    name = property(lambda self: self.record.name)
    python = property(lambda self: self.record.python)
    identity = property(lambda self: self.record.identity)
    image_id = property(lambda self: self.record.image_id)
    lock_hash = property(lambda self: self.record.lock_hash)
    requirements = property(lambda self: self.record.requirements)
    base = property(lambda self: self.record.base)
    packages = property(lambda self: self.record.packages)
    created = property(lambda self: self.record.created)

    @property
    def dir(self) -> Path:
        return self.store.env_dir(self.name)

    @property
    def archive(self) -> Path:
        return self.store.image_archive(self.image_id)

    @property
    def lock_text(self) -> str:
        """``pylock.toml``, checked against the record's lock hash."""
        path = self.dir / LOCK_FILE
        hint = f"re-create it with `venvoy init {self.name} --force`, or `venvoy remove {self.name}`"
        try:
            raw = read_bounded(path, MAX_LOCK_BYTES, hint)
        except FileNotFoundError:
            raise DamagedError(f"environment {self.name!r} has no {LOCK_FILE}", hint) from None
        except OSError as exc:
            raise DamagedError(f"cannot read {path}: {exc.strerror or exc}", hint) from None
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise DamagedError(f"{path} is damaged: not UTF-8 text", hint) from None
        # The lock hash is of the text with its line endings normalised (see lock_hash).
        if lock_hash(text) != self.lock_hash:
            raise DamagedError(f"{path} does not match the environment's lock hash", hint)
        return text

    @property
    def tag(self) -> str:
        return env_tag(self.name, self.identity)

    def as_dict(self) -> dict[str, Any]:
        return self.data


def lock_hash(text: str) -> str:
    """sha256 hex of the lock text with LF line endings and one final newline:
    part of the environment's identity."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return hashlib.sha256((text.rstrip("\n") + "\n").encode("utf-8")).hexdigest()


def read_bounded(path: Path, limit: int, hint: str = "remove or replace it") -> bytes:
    """A small file's bytes, refusing one larger than ``limit`` (a record is never big)
    or one that is not a regular file (a FIFO would block, a device never end)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with open(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DamagedError(f"{path} is damaged: not a regular file", hint)
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise DamagedError(f"{path} is damaged: larger than {limit} bytes", hint)
    return data


def _damaged_hint(name: str) -> str:
    return (f"re-create it with `venvoy init {name} --force`, or delete it with "
            f"`venvoy remove {name}`")


def read_record(store: Store, name: str) -> EnvRecord:
    """The checked record of ``name``: NotFound if there is none, DamagedError if it is bad."""
    path = store.env_dir(name) / RECORD_FILE
    hint = _damaged_hint(name)
    try:
        raw = read_bounded(path, MAX_RECORD_BYTES, hint)
    except FileNotFoundError:
        if path.parent.is_dir():  # written as a whole: a directory without a record is damage
            raise DamagedError(f"environment {name!r} has no {RECORD_FILE}", hint) from None
        raise NotFound(f"no environment named {name!r}",
                       f"create it with `venvoy init {name}`; `venvoy list` shows what exists"
                       ) from None
    except OSError as exc:
        raise DamagedError(f"cannot read {path}: {exc.strerror or exc}", hint) from None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise DamagedError(f"{path} is damaged: not valid JSON", hint) from None
    record = EnvRecord.from_dict(data, str(path), hint)
    if record.name != name:
        raise DamagedError(f"{path} is damaged: it names {record.name!r}", hint)
    return record


def get(name: str, store: Store | None = None) -> Environment:
    """The environment called ``name``; one clear error if there is none or it is
    damaged (its record, or its lock against the record's hash: a few KiB)."""
    store = store or Store()
    env = Environment(store, read_record(store, check_name(name)))
    _ = env.lock_text
    return env


def find(store: Store, name: str) -> Environment | None:
    """The environment called ``name``, or None when there is none (a damaged one raises)."""
    try:
        return get(name, store)
    except NotFound:
        return None


def names(store: Store) -> list[str]:
    """Names of the environment directories in the store (valid names only)."""
    try:
        entries = sorted(os.listdir(store.envs))
    except OSError:
        return []
    out = []
    for entry in entries:
        try:
            check_name(entry)
        except VenvoyError:
            continue
        out.append(entry)
    return out


def safe_text(text: str, limit: int = 400) -> str:
    """``text`` fit for one line of a terminal: every non-printable character
    (escape codes, newlines, bidi overrides) shown escaped, never sent."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return out if len(out) <= limit else out[:limit - 3] + "..."


def _forms(store: Store, env: Environment, markers: list[str]) -> list[str]:
    forms = ["archive"] if env.archive.is_file() else []
    if store.sif(env.image_id).is_file():
        forms.append("sif")
    if store.ch_dir(env.image_id).is_dir():
        forms.append("charliecloud")
    prefix = digest_hex(env.image_id)[:16]
    loaded = {m.split("-")[0] + ("-rootless" if "-rootless-" in m else "")
              for m in markers if prefix in m}
    # Marker names are file names: only a runtime's name is shown from them.
    return forms + sorted(f for f in loaded if f.replace("-", "").isalnum() and f.isascii())


def list_envs(store: Store | None = None) -> list[dict[str, Any]]:
    """Every environment with what `venvoy list` shows; a damaged one is listed
    as such (``{"name": ..., "damaged": "why"}``, the reason printable on one
    line) instead of breaking the list for every other environment."""
    store = store or Store()
    out: list[dict[str, Any]] = []
    loaded = store.root / "cache" / "loaded"
    try:
        markers = sorted(os.listdir(loaded))
    except OSError:
        markers = []
    for name in names(store):
        directory = store.env_dir(name)
        if not directory.is_dir():
            continue
        try:
            env = get(name, store)
            size = env.archive.stat().st_size if env.archive.is_file() else 0
            row = {
                "name": env.name, "python": env.python, "forms": _forms(store, env, markers),
                "size": size, "lock_hash": env.lock_hash, "identity": env.identity,
                "created": env.created, "packages": env.packages,
            }
        except VenvoyError as exc:
            out.append({"name": name, "damaged": safe_text(str(exc))})
            continue
        except OSError as exc:
            out.append({"name": name, "damaged": safe_text(f"cannot read it: {exc.strerror or exc}")})
            continue
        out.append(row)
    return out


def write_env(store: Store, record: EnvRecord, lock_text: str) -> Environment:
    """Write the environment's directory as a whole: all of it or none of it."""
    if lock_hash(lock_text) != record.lock_hash:
        raise VenvoyError(f"internal error: the lock of {record.name} does not match its record")
    final = store.env_dir(record.name)
    with store.new_path(final, directory=True) as tmp:
        tmp.chmod(0o755)
        (tmp / LOCK_FILE).write_text(lock_text)
        (tmp / REQUIREMENTS_FILE).write_text(record.requirements)
        data = (json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n").encode()
        (tmp / RECORD_FILE).write_bytes(data)
        # the fast path of `venvoy run` trusts a record of this size only
        (tmp / IMAGE_FILE).write_text(f"{record.image_id} {record.identity} {len(data)}\n")
    return Environment(store, record)


def named_images(store: Store, name: str) -> dict[str, str | None]:
    """Image IDs an environment's directory names, even when its record is
    damaged: ``env.json``'s ``image_id`` if it can be read at all, and the
    fast path's ``image`` file; each with the identity beside it (or None).
    Only well-formed IDs are returned: they can name no file outside the store."""
    found: dict[str, str | None] = {}
    directory = store.env_dir(name)
    with contextlib.suppress(OSError, ValueError, RecursionError, VenvoyError):
        words = read_bounded(directory / IMAGE_FILE, 4096).decode().split()
        if len(words) in (2, 3) and _is_hex64(words[1]):
            found[words[0]] = words[1]
    with contextlib.suppress(OSError, ValueError, RecursionError, VenvoyError):
        data = json.loads(read_bounded(directory / RECORD_FILE, MAX_RECORD_BYTES))
        if isinstance(data, dict) and isinstance(data.get("image_id"), str):
            identity = data.get("identity")
            found.setdefault(data["image_id"], identity if _is_hex64(identity) else None)
    out: dict[str, str | None] = {}
    for image_id, identity in found.items():
        with contextlib.suppress(VenvoyError):
            digest_hex(image_id)
            if image_id.startswith("sha256:"):
                out[image_id] = identity
    return out


def image_in_use(store: Store, image_id: str) -> bool:
    """Whether any environment names ``image_id``. A damaged record keeps every
    image its directory still names (see :func:`named_images`)."""
    return any(image_id in named_images(store, name) for name in names(store))


def image_lock(store: Store, image_id: str) -> contextlib.AbstractContextManager[None]:
    """The lock of one image of the store, shared by every process using it.

    Held by whoever publishes the image together with a record naming it
    (init, import) from the image's rename to the record's, and by
    :func:`drop_image_if_unused` from its check to its deletions: an image is
    never deleted between being published and being named. Always taken
    after the environment's lock (``env-NAME``), never the other way round,
    and never two image locks at once: no deadlock.
    """
    return store.lock(f"image-{digest_hex(image_id)}")


def drop_image_if_unused(store: Store, image_id: str) -> int:
    """Delete the canonical archive and cached forms of an image no env uses."""
    try:
        digest_hex(image_id)
    except VenvoyError:
        return 0  # a damaged record's id: it names no file of ours
    with image_lock(store, image_id):
        return _drop_unused(store, image_id)


def _drop_unused(store: Store, image_id: str) -> int:
    if image_in_use(store, image_id):
        return 0
    freed = 0
    for path in (store.image_archive(image_id), store.sif(image_id)):
        if path.is_file():
            freed += path.stat().st_size
            path.unlink()
    ch = store.ch_dir(image_id)
    if ch.is_dir():
        freed += sum(f.stat().st_size for f in ch.rglob("*") if f.is_file() and not f.is_symlink())
        shutil.rmtree(ch, ignore_errors=True)
    return freed


def remove(name: str, store: Store | None = None) -> int:
    """Delete an environment and whatever only it used; return the bytes freed.

    The record is read under the environment's lock (so a concurrent ``init
    --force`` cannot slip a new image past it), and a damaged record is
    removed too: what it names that is valid is cleaned up, the rest is left.
    Nothing is changed when the directory cannot be moved away (a read-only
    store): one clear error instead.
    """
    store = store or Store()
    check_name(name)
    with store.lock(f"env-{name}"):
        directory = store.env_dir(name)
        if directory.is_symlink():
            # Not a record venvoy wrote (list shows it as damaged): drop the link
            # itself, never what it points at.
            directory.unlink()
            return 0
        if not directory.is_dir():
            raise NotFound(f"no environment named {name!r}", "`venvoy list` shows what exists")
        try:
            record = read_record(store, name)
            images: dict[str, str | None] = {record.image_id: record.identity}
        except (DamagedError, NotFound):
            images = named_images(store, name)  # what a damaged record still names
        freed = 0
        with contextlib.suppress(OSError):
            freed = sum(f.stat().st_size for f in directory.iterdir() if f.is_file())
        # Rename first (atomic), then delete: a crash leaves no half-removed record.
        doomed = directory.with_name(temp_name(f"{TMP_PREFIX}removed-{name}"))
        try:
            os.replace(directory, doomed)
        except OSError as exc:
            raise VenvoyError(f"cannot remove {name}: {exc.strerror or exc} ({directory})",
                              "venvoy needs write access to the store; nothing was changed"
                              ) from None
        shutil.rmtree(doomed, ignore_errors=True)
        for image_id, identity in images.items():
            try:
                freed += drop_image_if_unused(store, image_id)
            except OSError as exc:
                raise VenvoyError(f"removed {name}, but cannot delete its image: "
                                  f"{exc.strerror or exc} ({exc.filename})",
                                  "delete that file by hand, or fix the store's permissions"
                                  ) from None
            if identity is not None and not image_in_use(store, image_id):
                from venvoy.store.forms import forget_all_loaded

                forget_all_loaded(store, image_id, env_tag(name, identity))
    return freed
