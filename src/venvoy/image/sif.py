"""A SIF (Apptainer's and Singularity's image file) written by venvoy, deterministically.

The image's layers are flattened in one pass (:mod:`venvoy.image.squash`)
into ``sqfstar``, which writes the squashfs straight into the SIF file at
its data offset; then venvoy writes the SIF's global header and its one
descriptor in front (layout of github.com/apptainer/sif, format version 01):

====================  ===========================================================
offset 0 (128 bytes)  launch line, ``SIF_MAGIC``, version ``01``, arch, UUID,
                      created/modified times, descriptors free/total/offset/size,
                      data offset/size (little-endian int64s)
4096 (48 x 585)       descriptors: one used, the primary system partition
                      (data type 0x4004, squashfs, arch), the others zero
32768                 the squashfs (aligned to 4096, as Apptainer aligns it)
====================  ===========================================================

The UUID is derived from the image ID and every time is the image's own
creation time, so the same canonical image gives the same SIF bytes on any
machine (given the same compressor): a site library's SIF can be checked by
its hash.

Apptainer needs its metadata inside the image: ``/.singularity.d/`` with
``env/10-docker2singularity.sh`` (the image's ``ENV``, ``PATH`` set, the
others defaulted, as ``apptainer build`` writes them), the ``actions``,
``runscript`` (``ENTRYPOINT``/``CMD``), ``labels.json``, ``libs/`` (for
``--nv``) and the links ``/environment``, ``/singularity``, ``/.exec`` ...
What the image itself has at those paths is replaced, as ``apptainer build``
does. Missing mount points (``/proc``, ``/sys``, ``/dev``, ``/tmp``, ``/home``,
``/etc/hosts``, ``/etc/resolv.conf``) are added as empty directories/files.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import struct
import uuid
from pathlib import Path
from typing import Any

from venvoy.core.errors import VenvoyError
from venvoy.image.oci import ImageSource
from venvoy.image.squash import Extra, flatten, make_squashfs

LAUNCH = b"#!/usr/bin/env run-singularity\n"
MAGIC = b"SIF_MAGIC"
VERSION = b"01"
HEADER_SIZE = 128
DESCR_OFFSET = 4096
DESCR_COUNT = 48
DESCR_SIZE = 585
DATA_OFFSET = DESCR_OFFSET + DESCR_COUNT * DESCR_SIZE  # 32176, as Apptainer's own SIFs
ALIGN = 4096
PARTITION_OFFSET = -(-DATA_OFFSET // ALIGN) * ALIGN  # 32768
DATA_PARTITION = 0x4004
FS_SQUASH = 1
PART_PRIMSYS = 2
GROUP_DEFAULT = 0xF0000001
#: SIF architecture codes, by Go's GOARCH (the image config's ``architecture``).
ARCH_CODES = {"386": b"01", "amd64": b"02", "arm": b"03", "arm64": b"04", "ppc64": b"05",
              "ppc64le": b"06", "mips": b"07", "mipsle": b"08", "mips64": b"09",
              "mips64le": b"10", "s390x": b"11", "riscv64": b"12"}
_UUID_NAMESPACE = uuid.UUID("5f0b6c3e-8a59-4d1b-9a3c-0e2f6a1d7c41")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: Paths of the image that Apptainer's metadata replaces.
RESERVED = (".singularity.d", "environment", "singularity", ".exec", ".run", ".shell", ".test")


def sif_uuid(image_id: str) -> uuid.UUID:
    """The SIF's ID: a name-based UUID of the image ID (same image, same ID)."""
    return uuid.uuid5(_UUID_NAMESPACE, image_id)


def image_time(source: ImageSource) -> int:
    """The image's creation time (its config's ``created``), 0 if it has none."""
    created = source.info.config.get("created")
    if isinstance(created, str) and created:
        text = created.strip().replace("Z", "+00:00")
        if "." in text:  # Go writes nanoseconds; Python reads at most microseconds
            head, _, tail = text.partition(".")
            digits = "".join(c for c in tail if c.isdigit())
            text = f"{head}{tail[len(digits):]}"
        try:
            when = datetime.datetime.fromisoformat(text)
        except ValueError:
            return 0
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        return max(0, min(int(when.timestamp()), (1 << 32) - 1))
    return 0


def _dq(value: str) -> str:
    """``value`` inside double quotes of a POSIX shell, literal."""
    return '"' + re.sub(r'([\\"$`])', r"\\\1", value) + '"'


def env_script(env: list[str]) -> str:
    """``10-docker2singularity.sh``: PATH set, every other variable defaulted (the
    caller's value wins), as ``apptainer build`` writes it."""
    lines = ["#!/bin/sh"]
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not _ENV_KEY.match(key):
            continue
        if key == "PATH":
            lines.append(f"export PATH={_dq(value)}")
        else:
            lines.append(f'export {key}="${{{key}:-{_dq(value)}}}"')
    return "\n".join(lines) + "\n"


def _words(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def runscript(config: dict[str, Any]) -> str:
    """The runscript: ENTRYPOINT then the arguments given, or CMD without any."""
    entry = " ".join(shlex.quote(w) for w in _words(config.get("Entrypoint")))
    cmd = " ".join(shlex.quote(w) for w in _words(config.get("Cmd")))
    with_args = f"exec {entry} \"$@\"" if entry else 'exec "$@"'
    default = f"exec {entry} {cmd}".rstrip() if (entry or cmd) else "exec /bin/sh"
    return ("#!/bin/sh\n# Made by venvoy from the image's ENTRYPOINT and CMD.\n"
            f'if [ "$#" -gt 0 ]; then\n    {with_args}\nfi\n{default}\n')


_SOURCE_ENV = ('for script in /.singularity.d/env/*.sh; do\n'
               '    if [ -f "$script" ]; then\n        . "$script"\n    fi\ndone\n')
_ACTIONS = {
    "exec": 'exec "$@"\n',
    "run": 'if [ -x /.singularity.d/runscript ]; then\n    exec /.singularity.d/runscript "$@"\n'
           'fi\necho "no runscript in this image" >&2\nexit 1\n',
    "shell": 'if [ -n "${SINGULARITY_SHELL:-}" ] && [ -x "$SINGULARITY_SHELL" ]; then\n'
             '    exec "$SINGULARITY_SHELL" "$@"\nfi\nif [ -x /bin/bash ]; then\n'
             '    exec /bin/bash --norc "$@"\nfi\nexec /bin/sh "$@"\n',
    "start": 'if [ -x /.singularity.d/startscript ]; then\n'
             '    exec /.singularity.d/startscript "$@"\nfi\n',
    "test": 'if [ -x /.singularity.d/test ]; then\n    exec /.singularity.d/test "$@"\nfi\n'
            'echo "no test script in this image" >&2\nexit 1\n',
}
_BASE_ENV = ('#!/bin/sh\n# Libraries Apptainer binds in (--nv, --rocm) and a prompt.\n'
             'if [ -z "${LD_LIBRARY_PATH:-}" ]; then\n'
             '    LD_LIBRARY_PATH="/.singularity.d/libs"\nelse\n'
             '    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/.singularity.d/libs"\nfi\n'
             'if [ -z "${PS1:-}" ]; then\n    PS1="Apptainer> "\nfi\n'
             'export LD_LIBRARY_PATH PS1\n')
_RUNTIME_VARS = ('#!/bin/sh\n# PATH given at run time (--env PATH=..., APPTAINERENV_PATH, '
                 'APPEND_PATH, PREPEND_PATH).\n'
                 'if [ -n "${SING_USER_DEFINED_PREPEND_PATH:-}" ]; then\n'
                 '    PATH="${SING_USER_DEFINED_PREPEND_PATH}:${PATH}"\nfi\n'
                 'if [ -n "${SING_USER_DEFINED_APPEND_PATH:-}" ]; then\n'
                 '    PATH="${PATH}:${SING_USER_DEFINED_APPEND_PATH}"\nfi\n'
                 'if [ -n "${SING_USER_DEFINED_PATH:-}" ]; then\n'
                 '    PATH="${SING_USER_DEFINED_PATH}"\nfi\n'
                 'unset SING_USER_DEFINED_PREPEND_PATH SING_USER_DEFINED_APPEND_PATH '
                 'SING_USER_DEFINED_PATH\nexport PATH\n')


def apptainer_extras(source: ImageSource) -> list[Extra]:
    """Apptainer's metadata for ``source`` and the mount points it needs."""
    config = source.info.config.get("config")
    config = config if isinstance(config, dict) else {}
    raw_labels = config.get("Labels")
    labels: dict[str, str] = {"org.label-schema.schema-version": "1.0"}
    arch = source.info.config.get("architecture")
    if isinstance(arch, str):
        labels["org.label-schema.build-arch"] = arch
    if isinstance(raw_labels, dict):
        labels.update({k: v for k, v in raw_labels.items()
                       if isinstance(k, str) and isinstance(v, str)})
    labels["org.venvoy.sif-from"] = source.info.image_id
    d = ".singularity.d"
    items = [
        Extra(d, b"5", mode=0o755),
        Extra(f"{d}/actions", b"5", mode=0o755),
        Extra(f"{d}/env", b"5", mode=0o755),
        Extra(f"{d}/libs", b"5", mode=0o755),
        Extra(f"{d}/Singularity", b"0", (f"bootstrap: docker-archive\nfrom: venvoy canonical "
                                         f"image {source.info.image_id}\n").encode()),
        Extra(f"{d}/labels.json", b"0", (json.dumps(labels, indent=1, sort_keys=True)
                                         + "\n").encode()),
        Extra(f"{d}/runscript", b"0", runscript(config).encode(), 0o755),
        Extra(f"{d}/startscript", b"0", b"#!/bin/sh\n", 0o755),
        Extra(f"{d}/env/01-base.sh", b"0", b"#!/bin/sh\n", 0o755),
        Extra(f"{d}/env/10-docker2singularity.sh", b"0", env_script(source.env).encode(), 0o755),
        Extra(f"{d}/env/90-environment.sh", b"0", b"#!/bin/sh\n", 0o755),
        Extra(f"{d}/env/99-base.sh", b"0", _BASE_ENV.encode(), 0o755),
        Extra(f"{d}/env/99-runtimevars.sh", b"0", _RUNTIME_VARS.encode(), 0o755),
    ]
    for action, body in sorted(_ACTIONS.items()):
        text = "#!/bin/sh\n" + (_SOURCE_ENV if action != "start" else "") + body
        items.append(Extra(f"{d}/actions/{action}", b"0", text.encode(), 0o755))
    items += [
        Extra("environment", b"2", mode=0o777, linkname=f"{d}/env/90-environment.sh"),
        Extra("singularity", b"2", mode=0o777, linkname=f"{d}/runscript"),
        Extra(".exec", b"2", mode=0o777, linkname=f"{d}/actions/exec"),
        Extra(".run", b"2", mode=0o777, linkname=f"{d}/actions/run"),
        Extra(".shell", b"2", mode=0o777, linkname=f"{d}/actions/shell"),
        Extra(".test", b"2", mode=0o777, linkname=f"{d}/actions/test"),
    ]
    for mount in ("proc", "sys", "dev", "home", "mnt"):
        items.append(Extra(mount, b"5", mode=0o755))
    items.append(Extra("tmp", b"5", mode=0o1777))
    items.append(Extra("etc", b"5", mode=0o755))
    items.append(Extra("var", b"5", mode=0o755))
    items.append(Extra("var/tmp", b"5", mode=0o1777))
    items += [Extra("etc/hosts", b"0"), Extra("etc/resolv.conf", b"0")]
    return items


# -- the SIF container --------------------------------------------------------------------

def sif_header(*, image_id: str, arch: bytes, when: int, fs_size: int) -> bytes:
    """The first ``PARTITION_OFFSET`` bytes of a SIF holding one squashfs of ``fs_size`` bytes."""
    padded = fs_size + (PARTITION_OFFSET - DATA_OFFSET)
    head = struct.pack("<32s10s3s3s16s8q", LAUNCH, MAGIC, VERSION, arch, sif_uuid(image_id).bytes,
                       when, when, DESCR_COUNT - 1, DESCR_COUNT, DESCR_OFFSET,
                       DESCR_COUNT * DESCR_SIZE, DATA_OFFSET, padded)
    extra = struct.pack("<ii3s", FS_SQUASH, PART_PRIMSYS, arch)
    descr = struct.pack("<i?III5q2q128s384s", DATA_PARTITION, True, 1, GROUP_DEFAULT, 0,
                        PARTITION_OFFSET, fs_size, padded, when, when, 0, 0, b"", extra)
    assert len(head) == HEADER_SIZE and len(descr) == DESCR_SIZE
    out = bytearray(PARTITION_OFFSET)
    out[:HEADER_SIZE] = head
    out[DESCR_OFFSET:DESCR_OFFSET + DESCR_SIZE] = descr
    return bytes(out)


def read_sif_header(path: Path) -> dict[str, Any]:
    """The header fields and used descriptors of a SIF (for checks and tests)."""
    with open(path, "rb") as fh:
        raw = fh.read(DATA_OFFSET)
    if len(raw) < DATA_OFFSET or raw[32:41] != MAGIC:
        raise VenvoyError(f"{path} is not a SIF file", "give the path of a .sif file")
    launch, magic, version, arch, ident, *nums = struct.unpack("<32s10s3s3s16s8q",
                                                               raw[:HEADER_SIZE])
    names = ("created", "modified", "descr_free", "descr_total", "descr_offset", "descr_size",
             "data_offset", "data_size")
    info: dict[str, Any] = dict(zip(names, nums, strict=True))
    info.update(launch=launch, magic=magic.rstrip(b"\0"), version=version.rstrip(b"\0"),
                arch=arch.rstrip(b"\0"), uuid=str(uuid.UUID(bytes=ident)), descriptors=[])
    for i in range(min(info["descr_total"], DESCR_COUNT)):
        at = info["descr_offset"] + i * DESCR_SIZE
        (dtype, used, did, group, link, offset, size, padded, ctime, mtime, _uid, _gid, name,
         extra) = struct.unpack("<i?III5q2q128s384s", raw[at:at + DESCR_SIZE])
        if used:
            fstype, parttype, parch = struct.unpack("<ii3s", extra[:11])
            info["descriptors"].append(dict(
                type=dtype, id=did, group=group, link=link, offset=offset, size=size,
                padded=padded, created=ctime, modified=mtime, name=name.rstrip(b"\0"),
                fstype=fstype, parttype=parttype, arch=parch.rstrip(b"\0")))
    return info


def build_sif(archive: Path, out: Path, *, sqfstar: str, compression: str,
              env: dict[str, str] | None = None) -> None:
    """Write the SIF of the canonical image ``archive`` to ``out`` (a new file;
    the caller renames it into place). Raises
    :class:`~venvoy.image.squash.FlattenUnsupported` for layouts to convert otherwise."""
    found: dict[str, Any] = {}

    def feed(write: Any) -> None:
        found["source"] = flatten(archive, write, extras=apptainer_extras, reserved=RESERVED,
                                  mtime=image_time)

    # The time is only known once the config is read: peek at it first (cheap).
    from venvoy.image.oci import open_archive, read_source

    with open_archive(Path(archive)) as outer:
        source = read_source(outer, Path(archive))
    when = image_time(source)
    make_squashfs(sqfstar, out, feed, compression=compression, fixed_time=when,
                  offset=PARTITION_OFFSET, env=env)
    fs_size = os.path.getsize(out) - PARTITION_OFFSET
    if fs_size <= 0:
        raise VenvoyError(f"sqfstar wrote no file system to {out}", "check free space")
    arch_name = source.info.config.get("architecture")
    arch = ARCH_CODES.get(arch_name if isinstance(arch_name, str) else "", b"00")
    header = sif_header(image_id=source.info.image_id, arch=arch, when=when, fs_size=fs_size)
    fd = os.open(out, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.pwrite(fd, header, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["ARCH_CODES", "PARTITION_OFFSET", "RESERVED", "apptainer_extras", "build_sif",
           "env_script", "image_time", "read_sif_header", "runscript", "sif_header", "sif_uuid"]
