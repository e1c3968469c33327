"""``venvoy doctor``: what works on this machine, and why not.

Every check returns a :class:`Check`: a status (``ok``, ``warn``, ``fail`` or
``n/a``), the evidence it saw, and the one thing to do about it. Checks read
cheap facts (files under /proc, /dev, /etc; ``statvfs``; PATH) directly; the
few that must start a program (a user-namespace probe, the runtimes' versions,
Slurm's ``scontrol``/``srun``) run in parallel in a thread pool, each with a
timeout, so a whole report without an environment NAME takes well under two
seconds and a hung daemon costs at most the timeout.

Nothing here starts a container unless asked (``verify=True``, or the GPU
probe with a NAME on a machine with a GPU).
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from venvoy.core.errors import VenvoyError

OK, WARN, FAIL, NA = "ok", "warn", "fail", "n/a"
STATUSES = (OK, WARN, FAIL, NA)
#: The longest evidence a check keeps (the rest is cut, marked "...").
EVIDENCE_MAX = 400
#: How long one probe (a subprocess) may take before it counts as "no answer".
PROBE_TIMEOUT_S = 1.5
#: File system types that are shared between nodes (network or cluster file systems).
SHARED_FS = frozenset({
    "nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "smbfs", "ceph", "fuse.ceph",
    "glusterfs", "fuse.glusterfs", "pvfs2", "orangefs", "panfs", "wekafs", "afs", "fuse.sshfs",
})
#: Free space below which temporary space fails (a SIF conversion needs a few
#: times the image's size) or warns.
TMP_FAIL_BYTES = 1 << 30
TMP_WARN_BYTES = 5 << 30
#: The SIF compression ``apptainer build`` uses by default (mksquashfs's gzip).
SIF_DEFAULT_COMPRESSION = "gzip"
#: Names of the squashfs compressors and the library (or kernel option) that decodes each.
COMPRESSORS = (("gzip", b"libz.so", "ZLIB"), ("zstd", b"libzstd.so", "ZSTD"),
               ("lz4", b"liblz4.so", "LZ4"), ("xz", b"liblzma.so", "XZ"))

#: Runs inside a container (Python standard library only, no CUDA toolkit):
#: the NVIDIA driver library through ctypes, the name and free memory of each
#: visible device, and a tiny computation on the first one (a 4-byte memset
#: and copy back through the driver API). Prints one JSON object.
GPU_PROBE = r"""
import ctypes, json, os, sys
out = {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "devices": []}
try:
    cu = ctypes.CDLL("libcuda.so.1")
except OSError as exc:
    out["error"] = "libcuda.so.1 (the NVIDIA driver library) cannot be loaded: %s" % exc
    print(json.dumps(out)); sys.exit(3)
C = ctypes
for fn, args in (("cuDeviceGetName", (C.c_char_p, C.c_int, C.c_int)),
                 ("cuCtxCreate_v2", (C.POINTER(C.c_void_p), C.c_uint, C.c_int)),
                 ("cuCtxDestroy_v2", (C.c_void_p,)),
                 ("cuMemGetInfo_v2", (C.POINTER(C.c_size_t), C.POINTER(C.c_size_t))),
                 ("cuMemAlloc_v2", (C.POINTER(C.c_uint64), C.c_size_t)),
                 ("cuMemsetD32_v2", (C.c_uint64, C.c_uint, C.c_size_t)),
                 ("cuMemcpyDtoH_v2", (C.c_void_p, C.c_uint64, C.c_size_t)),
                 ("cuMemFree_v2", (C.c_uint64,)),
                 ("cuGetErrorString", (C.c_int, C.POINTER(C.c_char_p)))):
    getattr(cu, fn).argtypes = args  # size_t and pointers are 64-bit: never pass a bare int
def check(rc, what):
    if rc != 0:
        msg = ctypes.c_char_p()
        cu.cuGetErrorString(rc, ctypes.byref(msg))
        raise RuntimeError("%s failed: %s (%d)" % (what, (msg.value or b"?").decode(), rc))
try:
    check(cu.cuInit(0), "cuInit")
    n = ctypes.c_int()
    check(cu.cuDeviceGetCount(ctypes.byref(n)), "cuDeviceGetCount")
    ver = ctypes.c_int()
    check(cu.cuDriverGetVersion(ctypes.byref(ver)), "cuDriverGetVersion")
    out["driver_cuda_version"] = "%d.%d" % (ver.value // 1000, ver.value % 1000 // 10)
    for i in range(n.value):
        dev = ctypes.c_int()
        check(cu.cuDeviceGet(ctypes.byref(dev), i), "cuDeviceGet")
        name = ctypes.create_string_buffer(256)
        check(cu.cuDeviceGetName(name, 256, dev), "cuDeviceGetName")
        ctx = ctypes.c_void_p()
        check(cu.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev), "cuCtxCreate")
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        check(cu.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)), "cuMemGetInfo")
        entry = {"index": i, "name": name.value.decode(), "total_mib": total.value >> 20,
                 "free_mib": free.value >> 20}
        if i == 0:
            ptr = ctypes.c_uint64()
            check(cu.cuMemAlloc_v2(ctypes.byref(ptr), 1024 * 4), "cuMemAlloc")
            check(cu.cuMemsetD32_v2(ptr, 0x2A, 1024), "cuMemsetD32")
            host = (ctypes.c_uint32 * 1024)()
            check(cu.cuMemcpyDtoH_v2(host, ptr, 1024 * 4), "cuMemcpyDtoH")
            cu.cuMemFree_v2(ptr)
            entry["computation"] = "memset 1024 x 42 on the device, sum read back = %d" % sum(host)
        cu.cuCtxDestroy_v2(ctx)
        out["devices"].append(entry)
except RuntimeError as exc:
    out["error"] = str(exc)
print(json.dumps(out))
sys.exit(0 if out["devices"] and "error" not in out else 4)
"""


@dataclass(frozen=True)
class Check:
    """One finding: where, what, how it stands, the evidence, what to do."""

    area: str
    name: str
    status: str
    evidence: str
    action: str = ""

    def __post_init__(self) -> None:
        # Evidence quotes paths and other programs' output: a line, never a flood.
        if len(self.evidence) > EVIDENCE_MAX:
            object.__setattr__(self, "evidence", self.evidence[: EVIDENCE_MAX - 3] + "...")

    def as_dict(self) -> dict[str, str]:
        return {"area": self.area, "name": self.name, "status": self.status,
                "evidence": self.evidence, "action": self.action}


@dataclass
class Report:
    """Every check, in order, and how long the doctor took."""

    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    name: str | None = None

    @property
    def ok(self) -> bool:
        """True when nothing failed (warnings do not fail)."""
        return not any(c.status == FAIL for c in self.checks)

    def count(self, status: str) -> int:
        return sum(1 for c in self.checks if c.status == status)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "seconds": round(self.seconds, 3), "name": self.name,
                "counts": {s: self.count(s) for s in STATUSES},
                "checks": [c.as_dict() for c in self.checks]}


@dataclass(frozen=True)
class Host:
    """Where the doctor reads host facts (tests point these at fakes)."""

    proc: str = "/proc"
    dev: str = "/dev"
    etc: str = "/etc"
    sys: str = "/sys"
    boot: str = "/boot"


# -- small helpers ----------------------------------------------------------------

def read_text(path: str, limit: int = 1 << 20) -> str | None:
    """A small text file's content, or None if it cannot be read."""
    try:
        with open(path, "rb") as fh:
            return fh.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def run_probe(argv: list[str], env: Mapping[str, str], timeout: float = PROBE_TIMEOUT_S,
              ) -> tuple[int, str] | None:
    """(exit status, stdout+stderr) of a short command; None when it could not
    start or gave no answer within ``timeout`` seconds."""
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, env=dict(env), errors="replace")
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.returncode, proc.stdout + proc.stderr


def gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GB" if n >= 1 << 30 else f"{n >> 20} MB"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def existing_parent(path: str) -> str:
    """``path`` or its nearest ancestor that exists (the doctor never creates directories)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and path != os.path.dirname(path):
        path = os.path.dirname(path)
    return path


def unescape_mount(field_: str) -> str:
    """Mount points in mountinfo escape space, tab, newline and backslash as octal."""
    out, i = [], 0
    while i < len(field_):
        if field_[i] == "\\" and len(field_[i + 1:i + 4]) == 3 and field_[i + 1:i + 4].isdigit():
            out.append(chr(int(field_[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


def mount_of(path: str, mountinfo: str) -> tuple[str, str]:
    """(mount point, file system type) of the mount holding ``path`` (longest prefix)."""
    real = os.path.realpath(path)
    best = ("/", "?")
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        parts = left.split()
        if not sep or len(parts) < 5 or not right.split():
            continue
        point = unescape_mount(parts[4])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, right.split()[0])
    return best


def is_shared(fstype: str) -> bool:
    return fstype in SHARED_FS or fstype.startswith(("nfs", "fuse.gluster", "fuse.ceph"))


def locality(fstype: str, shared: str) -> str:
    if fstype == "?":
        return "file system unknown (no /proc/self/mountinfo)"
    return shared if is_shared(fstype) else "node-local"


def current_user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


# -- host checks ------------------------------------------------------------------

def check_user_namespaces(host: Host, probe: tuple[int, str] | str | None) -> Check:
    """Files first (the evidence), then a real ``unshare --user`` when one ran."""
    limit = read_text(os.path.join(host.proc, "sys/user/max_user_namespaces"))
    clone = read_text(os.path.join(host.proc, "sys/kernel/unprivileged_userns_clone"))
    apparmor = read_text(os.path.join(host.proc, "sys/kernel/apparmor_restrict_unprivileged_userns"))
    facts = []
    off = None
    if limit is not None:
        facts.append(f"max_user_namespaces={limit.strip()}")
        if limit.strip() == "0":
            off = "user.max_user_namespaces is 0"
    if clone is not None:
        facts.append(f"unprivileged_userns_clone={clone.strip()}")
        if clone.strip() == "0" and os.geteuid() != 0:
            off = off or "kernel.unprivileged_userns_clone is 0"
    if apparmor is not None and apparmor.strip() == "1":
        facts.append("AppArmor restricts unprivileged user namespaces")
    if isinstance(probe, tuple):
        last = (probe[1].strip().splitlines() or ["?"])[-1]
        if probe[0] == 0:
            facts.append("creating one works (unshare --user)")
        elif "unshare failed" in probe[1]:  # util-linux's words when the kernel says no
            facts.append(f"creating one failed: {last}")
            off = off or "creating one failed"
        else:
            facts.append(f"the unshare probe said nothing clear: {last}")
    elif probe is None:
        facts.append("`unshare --user` gave no answer")
    evidence = ", ".join(facts) or "no /proc/sys/user (not Linux?)"
    if off:
        return Check("host", "user namespaces", FAIL, f"disabled: {off} ({evidence})",
                     "rootless Podman, Charliecloud and unprivileged Apptainer need them: ask an "
                     "admin to set user.max_user_namespaces=15000 (sysctl), or use a setuid "
                     "Apptainer or Docker")
    return Check("host", "user namespaces", OK, evidence)


def subid_ranges(path: str, user: str, uid: int) -> list[tuple[int, int]]:
    """The user's subordinate id ranges (start, count) in /etc/subuid or /etc/subgid."""
    text = read_text(path) or ""
    ranges = []
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in (user, str(uid)):
            try:
                ranges.append((int(parts[1]), int(parts[2])))
            except ValueError:
                continue
    return ranges


def check_subids(host: Host, user: str, uid: int, euid: int, needed: bool) -> Check:
    """``needed``: a runtime checked here maps image users onto subordinate ids."""
    if euid == 0:
        return Check("host", "subordinate ids", NA,
                     "running as root: Podman runs rootful and needs no /etc/subuid range")
    counts = []
    missing = []
    for kind in ("subuid", "subgid"):
        ranges = subid_ranges(os.path.join(host.etc, kind), user, uid)
        total = sum(c for _, c in ranges)
        counts.append(f"{total} {kind}s")
        if total == 0:
            missing.append(f"/etc/{kind}")
    if missing:
        status = FAIL if needed else WARN
        return Check("host", "subordinate ids", status,
                     f"user {user} has no range in {' and '.join(missing)}"
                     + ("" if needed else " (only rootless Podman and Docker need one; neither "
                        "is checked here)"),
                     f"ask an admin to run `usermod --add-subuids 100000-165535 "
                     f"--add-subgids 100000-165535 {user}`")
    small = any(int(c.split()[0]) < 65536 for c in counts)
    return Check("host", "subordinate ids", WARN if small else OK,
                 f"user {user} has {' and '.join(counts)}",
                 "images with uids above the range fail to load: ask for 65536 ids" if small else "")


def squashfuse_path(environ: Mapping[str, str], apptainer_path: str | None) -> str | None:
    """squashfuse(_ll) on PATH, or the one an Apptainer install carries in its libexec."""
    from venvoy.runtime.base import which

    for name in ("squashfuse_ll", "squashfuse"):
        found = which(name, environ.get("PATH", os.defpath))
        if found:
            return found
    if apptainer_path:
        prefix = os.path.dirname(os.path.dirname(os.path.realpath(apptainer_path)))
        for sub in ("libexec/apptainer/bin", "lib/x86_64-linux-gnu/apptainer/bin",
                    "lib/aarch64-linux-gnu/apptainer/bin"):
            for name in ("squashfuse_ll", "squashfuse"):
                candidate = os.path.join(prefix, sub, name)
                if os.access(candidate, os.X_OK):
                    return candidate
    return None


def fuse_problem(host: Host) -> str | None:
    """Why /dev/fuse cannot be used by this process, or None."""
    import stat

    path = os.path.join(host.dev, "fuse")
    try:
        st = os.stat(path)
    except OSError:
        return f"{path} does not exist"
    if not stat.S_ISCHR(st.st_mode):
        return f"{path} is not a character device"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"{path} cannot be opened ({exc.strerror})"
    os.close(fd)
    return None


def check_fuse(host: Host, squashfuse: str | None, apptainer: bool, tmpdir: str,
               free: int | None) -> Check:
    problem = fuse_problem(host)
    if not apptainer and problem is None and squashfuse:
        return Check("host", "FUSE and squashfuse", NA,
                     "only Apptainer and Singularity mount SIFs, and neither is checked here")
    if problem is None and squashfuse:
        return Check("host", "FUSE and squashfuse", OK,
                     f"{host.dev}/fuse usable, squashfuse at {squashfuse}: SIFs are mounted, "
                     "not extracted")
    what = problem or "no squashfuse or squashfuse_ll on PATH"
    if problem is None and not squashfuse:
        todo = "install squashfuse (the `squashfuse` package) or ask an admin to"
    else:
        todo = "ask an admin to make /dev/fuse usable (chmod 0666, fuse module loaded), or"
    if not apptainer:
        return Check("host", "FUSE and squashfuse", NA,
                     f"{what}; only Apptainer and Singularity need it, and neither is checked here")
    room = f", which has {gib(free)} free" if free is not None else ""
    return Check("host", "FUSE and squashfuse", WARN,
                 f"{what}: every run extracts the SIF into APPTAINER_TMPDIR ({tmpdir}){room}",
                 f"{todo} point APPTAINER_TMPDIR at a large node-local directory")


def binary_decoders(path: str) -> set[str]:
    """Compressors a squashfuse binary can decode, from the libraries it names
    (its dynamic section); empty when nothing can be told (a static binary)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(4 << 20)
    except OSError:
        return set()
    found = {name for name, lib, _ in COMPRESSORS if lib in data}
    # A static build carries the decoders' own symbols instead of library names.
    for name, marker in (("zstd", b"ZSTD_decompress"), ("lz4", b"LZ4_decompress"),
                         ("xz", b"lzma_stream_decoder"), ("gzip", b"inflateInit")):
        if marker in data:
            found.add(name)
    return found


def kernel_decoders(host: Host) -> tuple[bool, set[str] | None]:
    """(kernel has squashfs, its compressors or None when the config is not readable)."""
    filesystems = read_text(os.path.join(host.proc, "filesystems")) or ""
    has = any(line.split()[-1:] == ["squashfs"] for line in filesystems.splitlines())
    config: str | None = None
    try:
        import gzip

        with gzip.open(os.path.join(host.proc, "config.gz"), "rt") as fh:
            config = fh.read()
    except (OSError, EOFError):
        release = getattr(os.uname(), "release", "")
        config = read_text(os.path.join(host.boot, f"config-{release}"), 1 << 23) if release \
            else None
    if config is None:
        return has, None
    if "CONFIG_SQUASHFS=" in config:
        has = True
    return has, {name for name, _, opt in COMPRESSORS if f"CONFIG_SQUASHFS_{opt}=y" in config}


def check_sif_compression(host: Host, squashfuse: str | None, fuse_ok: bool,
                          chosen: str = SIF_DEFAULT_COMPRESSION) -> Check:
    """Whether the SIFs venvoy makes here (``chosen``: the compressor, as
    ``runtime-info`` shows it) can be mounted, by squashfuse or the kernel."""
    fuse_set = binary_decoders(squashfuse) if squashfuse and fuse_ok else set()
    kernel, kset = kernel_decoders(host)
    parts = []
    unknown = []
    if squashfuse and fuse_ok:
        if fuse_set:
            parts.append(f"squashfuse decodes {', '.join(sorted(fuse_set))}")
        else:
            unknown.append("which compressors squashfuse decodes (static binary)")
    if kernel:
        if kset is None:
            parts.append("the kernel has squashfs")
            unknown.append("its compressors (no /proc/config.gz or /boot/config)")
        else:
            parts.append(f"kernel squashfs decodes {', '.join(sorted(kset)) or 'nothing'} "
                         "(used by setuid Apptainer only)")
    else:
        parts.append("the kernel has no squashfs")
    usable = fuse_set | (kset or set())
    evidence = "; ".join(parts)
    if unknown:
        evidence += "; could not tell " + " nor ".join(unknown)
    if chosen in usable:
        return Check("host", "SIF compression", OK, f"{evidence}; venvoy's SIFs use {chosen}")
    if unknown:
        return Check("host", "SIF compression", WARN, evidence,
                     "try `apptainer exec IMAGE.sif true`; if it extracts, see the FUSE line")
    return Check("host", "SIF compression", WARN,
                 f"{evidence}: SIFs cannot be mounted here and are extracted on every run",
                 "install squashfuse (with zlib and zstd support)")


def space(path: str, mountinfo: str) -> tuple[str, int | None, bool, str, str]:
    """(existing path, free bytes or None, writable, mount point, fs type)."""
    real = existing_parent(path)
    try:
        st = os.statvfs(real)
        free: int | None = st.f_bavail * st.f_frsize
        writable = not (st.f_flag & os.ST_RDONLY) and os.access(real, os.W_OK | os.X_OK)
    except OSError:
        free, writable = None, False
    point, fstype = mount_of(real, mountinfo)
    return real, free, writable, point, fstype


def not_a_directory(path: str) -> str | None:
    """The first part of ``path`` that exists and is not a directory, or None."""
    real = existing_parent(path)
    return None if os.path.isdir(real) else real


def too_long(path: str) -> bool:
    """Whether ``path`` (or one of its names) is longer than the system allows:
    it could never be created."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ENAMETOOLONG
    return False


def check_store(root: str, mountinfo: str) -> Check:
    if too_long(root):
        return Check("store", "store", FAIL, f"{root[:120]}...: path or a name in it too long",
                     "set VENVOY_HOME to a shorter path")
    blocker = not_a_directory(root)
    if blocker:
        return Check("store", "store", FAIL, f"{root}: {blocker} is not a directory",
                     "set VENVOY_HOME to a directory (or remove the file)")
    real, free, writable, point, fstype = space(root, mountinfo)
    kind = f"{fstype} on {point}, " + locality(fstype, "shared between nodes")
    where = root if real == os.path.abspath(root) else f"{root} (not created yet; {real} exists)"
    evidence = f"{where}: {kind}, {gib(free) if free is not None else '? '} free"
    if not writable:
        return Check("store", "store", FAIL, f"{evidence}, not writable",
                     "set VENVOY_HOME to a directory you can write")
    if free is not None and free < TMP_FAIL_BYTES:
        return Check("store", "store", FAIL, evidence,
                     "free space, or set VENVOY_HOME to a file system with room")
    hint = "" if is_shared(fstype) else (
        "on a cluster, compute nodes cannot see a node-local store: set VENVOY_HOME to a shared "
        "file system" if os.environ.get("SLURM_JOB_ID") else "")
    return Check("store", "store", OK, evidence, hint)


def check_tmp(label: str, path: str, source: str, mountinfo: str, action_var: str) -> Check:
    if too_long(path):
        return Check("store", label, FAIL, f"{path[:120]}... (from {source}): path or a name in "
                     "it too long", f"set {action_var} to a shorter path")
    blocker = not_a_directory(path)
    if blocker:
        return Check("store", label, FAIL, f"{path} (from {source}): {blocker} is not a directory",
                     f"set {action_var} to a directory")
    _, free, writable, _, fstype = space(path, mountinfo)
    kind = f"{fstype}, " + locality(fstype, "shared")
    evidence = f"{path} (from {source}; {kind}) has {gib(free) if free is not None else '?'} free"
    if not writable:
        return Check("store", label, FAIL, f"{path} (from {source}) is not writable",
                     f"set {action_var} to a directory you can write")
    if free is not None and free < TMP_FAIL_BYTES:
        return Check("store", label, FAIL, evidence,
                     f"set {action_var} to a directory with at least {gib(TMP_FAIL_BYTES)} free "
                     "(node-local scratch is best)")
    if free is not None and free < TMP_WARN_BYTES:
        return Check("store", label, WARN, evidence,
                     f"large images need more: set {action_var} to node-local scratch")
    if is_shared(fstype):
        return Check("store", label, WARN, evidence,
                     f"temporary files on {fstype} are slow: set {action_var} to node-local disk")
    return Check("store", label, OK, evidence)


def apptainer_tmpdir(environ: Mapping[str, str]) -> tuple[str, str]:
    for var in ("APPTAINER_TMPDIR", "SINGULARITY_TMPDIR", "TMPDIR"):
        if environ.get(var):
            return environ[var], var
    return "/tmp", "the default"  # noqa: S108 - Apptainer's own default, reported


# -- GPU ----------------------------------------------------------------------------

def gpu_devices(host: Host) -> tuple[list[str], bool]:
    """(NVIDIA device files, whether AMD's /dev/kfd is there)."""
    try:
        nvidia = sorted(n for n in os.listdir(host.dev) if n.startswith("nvidia"))
    except OSError:
        nvidia = []
    return nvidia, os.path.exists(os.path.join(host.dev, "kfd"))


def check_gpu(host: Host, environ: Mapping[str, str], adapters: list[Any]) -> list[Check]:
    """Devices, driver, allocation variables and each runtime's way to the GPU."""
    nvidia, kfd = gpu_devices(host)
    if not nvidia and not kfd:
        return [Check("gpu", "GPU", NA,
                      f"no NVIDIA ({host.dev}/nvidia*) or AMD ({host.dev}/kfd) devices on this host")]
    out = []
    dri = os.path.isdir(os.path.join(host.dev, "dri"))
    devs = [f"{host.dev}/{n}" for n in nvidia] + ([f"{host.dev}/kfd"] if kfd else [])
    out.append(Check("gpu", "devices", OK, " ".join(devs) + (f" {host.dev}/dri" if dri else "")))
    if nvidia:
        text = read_text(os.path.join(host.proc, "driver/nvidia/version"))
        first = next((line.strip() for line in (text or "").splitlines() if line.strip()), "")
        if first:
            out.append(Check("gpu", "NVIDIA driver", OK, first[:160]))
        else:
            out.append(Check("gpu", "NVIDIA driver", FAIL,
                             f"device files but no {host.proc}/driver/nvidia/version",
                             "the driver is not loaded: ask an admin (nvidia-smi says more)"))
    if kfd:
        version = read_text(os.path.join(host.sys, "module/amdgpu/version"))
        loaded = os.path.isdir(os.path.join(host.sys, "module/amdgpu"))
        out.append(Check("gpu", "AMD driver", OK if loaded else WARN,
                         f"amdgpu {version.strip()}" if version else
                         ("amdgpu loaded" if loaded else "no amdgpu module in /sys/module"),
                         "" if loaded else "check `rocminfo`"))
    from venvoy.runtime.request import gpu_env

    set_vars = [f"{k}={v}" for k, v in gpu_env(environ)]  # what venvoy passes into containers
    shown = ", ".join(set_vars)
    shown = shown if len(shown) <= 240 else shown[:237] + "..."
    from venvoy.runtime.oci_cli import allocated_gpus

    try:
        if nvidia:
            allocated_gpus(environ)
        refused = None
    except VenvoyError as exc:  # garbage, or "no GPU" (NoDevFiles): --gpu nvidia is refused
        refused = exc
    if refused is not None:
        out.append(Check("gpu", "allocation", WARN, refused.message, refused.hint))
    elif set_vars:
        out.append(Check("gpu", "allocation", OK,
                         shown + ": passed into the container; Docker and Podman get only "
                         "these devices"))
    elif environ.get("SLURM_JOB_ID"):
        out.append(Check("gpu", "allocation", WARN,
                         "inside a Slurm job but no CUDA_VISIBLE_DEVICES/ROCR_VISIBLE_DEVICES: "
                         "containers see every GPU of the node",
                         "ask for GPUs with --gpus (or --gres=gpu:N) so Slurm says which are yours"))
    else:
        out.append(Check("gpu", "allocation", OK,
                         "no CUDA_VISIBLE_DEVICES/ROCR_VISIBLE_DEVICES: containers see every GPU"))
    for rt in adapters:
        for kind, present in (("nvidia", bool(nvidia)), ("amd", kfd)):
            if present:
                out.append(check_runtime_gpu(rt, kind, environ))
    return out


def form_of(rt: Any) -> str:
    """"ref", "file" or "dir": how the adapter holds images (an ImageForm or a string)."""
    return str(getattr(rt.image_kind, "name", rt.image_kind))


def check_runtime_gpu(rt: Any, kind: str, environ: Mapping[str, str]) -> Check:
    """Whether ``--gpu KIND`` can start with this runtime: the adapter's own
    up-front check (driver devices, Docker's toolkit, Podman's CDI spec), plus
    what happens to images of its form."""
    from venvoy.runtime.base import which
    from venvoy.runtime.request import RunRequest

    name = f"{rt.name} --gpu {kind}"
    try:
        rt.check_gpu(RunRequest(image="venvoy-doctor:check", argv=("true",), gpu=kind))
    except VenvoyError as exc:
        return Check("gpu", name, FAIL, exc.message, exc.hint)
    form = form_of(rt)
    if form == "dir" and kind == "nvidia":
        inject = which("ch-fromhost", environ.get("PATH", os.defpath))
        if not inject:
            return Check("gpu", name, WARN, "each image directory needs the host's driver "
                         "libraries injected, and there is no ch-fromhost on PATH",
                         "install Charliecloud's ch-fromhost")
        return Check("gpu", name, OK, "each image directory needs the driver libraries injected "
                     f"once (`{inject} --nvidia IMAGE`); venvoy checks that at run")
    if form == "file":
        return Check("gpu", name, OK, "the host's driver libraries are bound in at run "
                     f"({'--nv' if kind == 'nvidia' else '--rocm'})")
    return Check("gpu", name, OK, "ready: the runtime's GPU support is installed")


def gpu_probe(runtime: Any, image: str, environ: Mapping[str, str],
              timeout: float = 120) -> Check:
    """Run :data:`GPU_PROBE` in ``image`` with ``--gpu nvidia``: what the container sees."""
    import json

    from venvoy.runtime.request import make_request

    try:
        req = make_request(image, ["python3", "-I", "-c", GPU_PROBE], gpu="nvidia", tty=False,
                           mount_cwd=False, environ=environ)
        inv = runtime.invocation(req)
    except VenvoyError as exc:
        return Check("gpu", f"{runtime.name} probe", FAIL, str(exc))
    try:
        proc = subprocess.run(inv.argv, env=inv.env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout, errors="replace")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("gpu", f"{runtime.name} probe", FAIL, f"the probe did not finish: {exc}")
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return Check("gpu", f"{runtime.name} probe", FAIL, f"exit {proc.returncode}: {last}")
    if result.get("error") or not result.get("devices"):
        return Check("gpu", f"{runtime.name} probe", FAIL,
                     result.get("error") or "the container sees no GPU",
                     "see the driver and runtime lines above")
    names = "; ".join(f"{d['index']}: {d['name']}" for d in result["devices"])
    return Check("gpu", f"{runtime.name} probe", OK,
                 f"the container sees {names} (CUDA_VISIBLE_DEVICES="
                 f"{result.get('cuda_visible_devices')}); {result['devices'][0].get('computation')}")


# -- Slurm ----------------------------------------------------------------------------

def mpi_name_ok(word: str) -> bool:
    return 0 < len(word) <= 40 and word.isascii() and all(c.isalnum() or c in "_-." for c in word)


def parse_mpi_list(text: str) -> list[str]:
    """Plugin names from ``srun --mpi=list`` (header and pmix version lines skipped)."""
    names: list[str] = []
    for line in text.splitlines():
        word = line.strip()
        if not word or " " in word or word.endswith(":") or word.startswith("specific"):
            word = word.split()[-1] if word.startswith("srun: ") and len(word.split()) == 2 else ""
        if mpi_name_ok(word) and word not in names and not word.endswith("...") and len(names) < 20:
            names.append(word)
    return names


def parse_max_array(text: str) -> int | None:
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "MaxArraySize":
            try:
                return int(value.strip())
            except ValueError:
                return None
    return None


def check_slurm(environ: Mapping[str, str], probes: dict[str, Future[Any]], store_root: str,
                ) -> list[Check]:
    from venvoy.runtime.base import which

    path = environ.get("PATH", os.defpath)
    sbatch, srun = which("sbatch", path), which("srun", path)
    if not sbatch and not srun:
        return [Check("slurm", "Slurm", NA,
                      "no sbatch or srun on PATH: not a Slurm site, or Slurm's module is not loaded",
                      "on a cluster, `module load slurm` (or ask where Slurm is)")]
    out = []
    missing = [n for n, p in (("sbatch", sbatch), ("srun", srun)) if not p]
    out.append(Check("slurm", "commands", WARN if missing else OK,
                     f"{'; '.join(p for p in (sbatch, srun) if p)}"
                     + (f"; no {missing[0]} on PATH" if missing else ""),
                     "fix PATH (module load slurm)" if missing else ""))
    ping = probes["ping"].result()
    if ping is None:
        out.append(Check("slurm", "controller", FAIL,
                         f"`scontrol ping` gave no answer within {PROBE_TIMEOUT_S} s",
                         "the controller is down or unreachable: ask the admins"))
    elif ping[0] != 0 or "UP" not in ping[1]:
        last = (ping[1].strip().splitlines() or ["?"])[-1]
        out.append(Check("slurm", "controller", FAIL, f"`scontrol ping`: {last}",
                         "the controller is down or unreachable: ask the admins"))
    else:
        out.append(Check("slurm", "controller", OK, ping[1].strip().splitlines()[0]))
    config = probes["config"].result()
    max_array = parse_max_array(config[1]) if config and config[0] == 0 else None
    if max_array is None:
        out.append(Check("slurm", "MaxArraySize", WARN, "`scontrol show config` did not say",
                         "ask the admins how large job arrays may be"))
    else:
        out.append(Check("slurm", "MaxArraySize", OK,
                         f"{max_array}: array indices 0-{max_array - 1}"))
    mpi = probes["mpi"].result()
    types = parse_mpi_list(mpi[1]) if mpi and mpi[0] == 0 else []
    real = [t for t in types if t != "none"]
    if not types:
        said = "did not answer" if mpi is None else "listed no MPI type"
        out.append(Check("slurm", "MPI", WARN, f"`srun --mpi=list` {said}",
                         "MPI jobs may not start: ask the admins which --mpi type to use"))
    else:
        out.append(Check("slurm", "MPI", OK if real else WARN, ", ".join(types),
                         "" if real else "no PMI plugin: MPI programs in containers cannot start"))
    if not environ.get("SLURM_JOB_ID"):
        out.append(Check("slurm", "store on compute nodes", NA,
                         "not inside an allocation (no SLURM_JOB_ID)",
                         "run `salloc -N2 venvoy doctor` to check that compute nodes see the store"))
    else:
        seen = probes["nodes"].result()
        nodes = environ.get("SLURM_JOB_NUM_NODES") or environ.get("SLURM_NNODES") or "1"
        if seen is not None and seen[0] == 0:
            out.append(Check("slurm", "store on compute nodes", OK,
                             f"{store_root} is visible on all {nodes} node(s) of job "
                             f"{environ['SLURM_JOB_ID']}"))
        elif seen is None and not srun:
            out.append(Check("slurm", "store on compute nodes", WARN,
                             f"inside job {environ['SLURM_JOB_ID']} but no srun on PATH to look",
                             "load your site's Slurm module and run `venvoy doctor` again"))
        else:
            why = "srun gave no answer" if seen is None else \
                (seen[1].strip().splitlines() or ["?"])[-1][:160]
            out.append(Check("slurm", "store on compute nodes", FAIL,
                             f"{store_root} is not visible on every node of job "
                             f"{environ['SLURM_JOB_ID']} ({why})",
                             "set VENVOY_HOME to a file system the compute nodes share"))
    return out


# -- runtimes -------------------------------------------------------------------------

def check_runtimes(found: list[Any], versions: dict[str, str | None] | None,
                   requested: str | None) -> list[Check]:
    out = []
    if requested and not any(f.name == requested for f in found):
        from venvoy.runtime import RUNTIMES

        out.append(Check("runtimes", requested, FAIL,
                         f"not installed here (no `{RUNTIMES[requested].binary}` on PATH)",
                         "install it or choose another with --runtime"))
    any_usable = any(f.usable for f in found)
    for f in found:
        ver = (versions or {}).get(f.name) or ("version: no answer in time" if versions is None
                                                else "version unknown")
        mode = "rootless" if f.rootless else "as root"
        evidence = f"{ver} at {f.path}, {mode}"
        if not f.usable:
            # One unusable runtime among usable ones is worth knowing, not a failure,
            # unless it is the one asked for.
            status = FAIL if requested or not any_usable else WARN
            out.append(Check("runtimes", f.name, status, f"{evidence}: {f.problem}",
                             "see the host lines below, or choose another runtime"))
        elif versions is not None and not versions.get(f.name):
            # `--version` failed or hung: the runs will likely do the same.
            out.append(Check("runtimes", f.name, WARN, f"{evidence}: it did not say its version",
                             f"check that `{os.path.basename(f.path)} version` answers"))
        elif not f.tested:
            out.append(Check("runtimes", f.name, WARN, f"{evidence}, usable",
                             "its adapter is written to the documentation and never ran here"))
        else:
            out.append(Check("runtimes", f.name, OK, f"{evidence}, usable"))
    if not found:
        out.append(Check("runtimes", "runtimes", FAIL, "no container runtime on PATH",
                         "install Apptainer (HPC) or Podman/Docker (workstation), or load your "
                         "site's module"))
    return out


def check_choice(requested: str | None, environ: Mapping[str, str]) -> Check:
    """The runtime `venvoy run` would use here, and why (the config file is read too)."""
    from venvoy.runtime.detect import choose_runtime

    try:
        choice = choose_runtime(requested, environ)
    except VenvoyError as exc:
        return Check("runtimes", "venvoy uses", FAIL, exc.message, exc.hint)
    return Check("runtimes", "venvoy uses", OK, f"{choice.runtime.name}: {choice.reason}")


# -- an environment ---------------------------------------------------------------------

def check_environment(name: str, store: Any, adapters: list[Any], verify: bool,
                      requested: str | None) -> list[Check]:
    from venvoy.store.fastpath import cached_image
    from venvoy.store.records import get

    area = f"env {name}"
    try:
        env = get(name, store)
    except VenvoyError as exc:
        return [Check(area, "record", FAIL, exc.message, exc.hint)]
    out = [Check(area, "record", OK, f"Python {env.python}, {plural(env.packages, 'package')}, identity "
                 f"{env.identity[:12]}, built {env.created}")]
    try:
        env.lock_text  # noqa: B018 - reading it checks it against the record's hash
        out.append(Check(area, "lock", OK, f"pylock.toml matches lock hash {env.lock_hash[:12]}"))
    except VenvoyError as exc:
        out.append(Check(area, "lock", FAIL, exc.message, exc.hint))
    archive = env.archive
    if archive.is_file():
        out.append(Check(area, "image", OK, f"{archive} ({gib(archive.stat().st_size)})"))
    else:
        out.append(Check(area, "image", FAIL, f"canonical image {archive} is missing",
                         f"rebuild it with `venvoy init {name} --force`"))
    for rt in adapters:
        form = cached_image(str(store.root), rt, env.image_id, env.tag, store.environ)
        kind = str(getattr(rt.image_kind, "name", rt.image_kind))  # ImageForm or a plain string
        what = {"file": "SIF", "dir": "image directory"}.get(kind, "loaded image")
        if form:
            note = " (venvoy's note; the runtime was not asked)" if kind == "ref" else ""
            out.append(Check(area, f"{rt.name} form", OK, f"{what} {form}{note}"))
        else:
            out.append(Check(area, f"{rt.name} form", WARN, f"no {what} yet",
                             f"the first `venvoy run --runtime {rt.name} {name}` makes it; run "
                             "it once before submitting many jobs"))
    if verify:
        from venvoy.api.environments import verify as verify_env

        try:
            report = verify_env(name, runtime=requested, store=store)
        except VenvoyError as exc:
            out.append(Check(area, "verify", FAIL, exc.message, exc.hint))
        else:
            drift = sum(len(report[k]) for k in ("missing_packages", "unexpected_packages",
                                                 "version_mismatches", "modified_files",
                                                 "missing_files"))
            out.append(Check(area, "verify", OK if report["ok"] else FAIL,
                             f"{plural(report['packages'], 'package')}, "
                             f"{plural(report['checked_files'], 'file')} "
                             f"checked in {report['runtime']}: "
                             + ("match the lock" if report["ok"] else f"{drift} differences"),
                             "" if report["ok"] else f"see `venvoy verify {name}`; rebuild with "
                             f"`venvoy init {name} --force`"))
    return out


# -- the whole report ---------------------------------------------------------------------

def uncached_versions(adapters: list[Any], env: Mapping[str, str]) -> dict[str, str | None]:
    """Each runtime's version, probed without the store's cache (which writing
    would create the store: the doctor looks, it does not create)."""
    def one(rt: Any) -> str | None:
        argv, rt_env = list(rt.version_argv()), getattr(rt, "environ", env)
        proc = run_probe(argv, rt_env)
        if (proc is None or proc[0] != 0) and argv[1:] != ["--version"]:
            proc = run_probe([argv[0], "--version"], rt_env)  # e.g. Docker with its daemon down
        return rt.parse_version(proc[1]) if proc is not None and proc[0] == 0 else None

    if not adapters:
        return {}
    with ThreadPoolExecutor(max_workers=len(adapters)) as pool:
        return dict(zip([rt.name for rt in adapters], pool.map(one, adapters), strict=True))


def doctor(name: str | None = None, *, runtime: str | None = None, verify: bool = False,
           environ: Mapping[str, str] | None = None, host: Host | None = None,
           store_root: str | None = None) -> Report:
    """Check this machine (and environment ``name``); see the module docstring."""
    from venvoy.runtime import adapter_class
    from venvoy.runtime.base import which
    from venvoy.runtime.detect import find_runtimes, normalize_name, versions
    from venvoy.store.layout import Store

    start = time.monotonic()
    env = os.environ if environ is None else environ
    host = host or Host()
    requested = normalize_name(runtime) if runtime else None
    if name is not None:
        from venvoy.core.names import check_name

        check_name(name)
    found = [f for f in find_runtimes(env) if requested in (None, f.name)]
    adapters = [adapter_class(f.name)(f.path, env) for f in found]
    store = Store(root=None if store_root is None else Path(store_root), environ=env)
    root = str(store.root)
    path = env.get("PATH", os.defpath)

    pool = ThreadPoolExecutor(max_workers=6)
    probes: dict[str, Future[Any]] = {}
    try:
        # The versions cache lives in the store: a store not created yet stays so.
        probes["versions"] = pool.submit(versions, adapters, env, PROBE_TIMEOUT_S) \
            if os.path.isdir(root) else pool.submit(uncached_versions, adapters, env)
        unshare = which("unshare", path)
        if unshare:
            # The command run in the new namespace is unshare itself (`--version`):
            # always there, whatever PATH holds.
            probes["userns"] = pool.submit(run_probe, [unshare, "--user", unshare, "--version"], env)
        scontrol, srun = which("scontrol", path), which("srun", path)
        has_slurm = bool(which("sbatch", path) or srun)
        none: Future[Any] = Future()
        none.set_result(None)
        probes["ping"] = pool.submit(run_probe, [scontrol, "ping"], env) if scontrol and has_slurm \
            else none
        probes["config"] = pool.submit(run_probe, [scontrol, "show", "config"], env) \
            if scontrol and has_slurm else none
        probes["mpi"] = pool.submit(run_probe, [srun, "--mpi=list"], env) if srun else none
        if srun and env.get("SLURM_JOB_ID"):
            nodes = env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or "1"
            probes["nodes"] = pool.submit(
                run_probe, [srun, "--overlap", f"--nodes={nodes}", "--ntasks-per-node=1",
                            "test", "-d", existing_parent(root)], env, 30.0)
        else:
            probes["nodes"] = none

        report = Report(name=name)
        checks = report.checks
        # Everything below is cheap; the probes run meanwhile.
        mountinfo = read_text(os.path.join(host.proc, "self/mountinfo")) or ""
        # Runtimes that run SIF files mount them with FUSE (Apptainer, Singularity).
        apptainerish = [f for a, f in zip(adapters, found, strict=True) if form_of(a) == "file"]
        app_tmp, app_src = apptainer_tmpdir(env)
        _, app_free, _, _, _ = space(app_tmp, mountinfo)
        squashfuse = squashfuse_path(env, apptainerish[0].path if apptainerish else None)
        host_checks = [
            # A rootless engine with its own image store (Podman, rootless Docker) maps
            # the image's users onto the caller's subordinate ids.
            check_subids(host, current_user(), os.getuid(), os.geteuid(),
                         any(f.rootless and form_of(a) == "ref"
                             for a, f in zip(adapters, found, strict=True))),
            check_fuse(host, squashfuse, bool(apptainerish), app_tmp, app_free),
        ]
        if apptainerish:
            from venvoy.runtime.detect import sif_compression_info

            made = (sif_compression_info(adapters) or {}).get("compression", "")
            # `apptainer build` (no sqfstar here, or asked for) writes gzip.
            chosen = made if made in {c for c, _, _ in COMPRESSORS} else SIF_DEFAULT_COMPRESSION
            host_checks.append(check_sif_compression(host, squashfuse, fuse_problem(host) is None,
                                                     chosen))
        store_checks = [check_store(root, mountinfo)]
        tmp_path = env.get("VENVOY_TMPDIR") or os.path.join(root, "tmp")
        store_checks.append(check_tmp("temporary space", tmp_path,
                                      "VENVOY_TMPDIR" if env.get("VENVOY_TMPDIR") else "the store",
                                      mountinfo, "VENVOY_TMPDIR"))
        if apptainerish:
            store_checks.append(check_tmp("APPTAINER_TMPDIR", app_tmp, app_src, mountinfo,
                                          "APPTAINER_TMPDIR"))
        usable = [a for a, f in zip(adapters, found, strict=True) if f.usable]
        gpu_checks = check_gpu(host, env, usable)
        slurm_checks = check_slurm(env, probes, root)

        try:
            vers = probes["versions"].result(timeout=PROBE_TIMEOUT_S * 2)
        except Exception:  # a version is evidence, never a reason to stop
            vers = None
        checks += check_runtimes(found, vers, requested)
        checks.append(check_choice(requested, env))
        userns_probe = probes["userns"].result() if "userns" in probes else "not run"
        checks.append(check_user_namespaces(host, userns_probe))
        checks += host_checks
        checks += store_checks
        checks += gpu_checks
        if name is not None:
            checks += check_environment(name, store, usable, verify, requested)
            nvidia, _ = gpu_devices(host)
            if verify and nvidia:
                checks += _probe_env_gpu(name, store, usable)
        checks += slurm_checks
    finally:
        pool.shutdown(wait=True)
    report.seconds = time.monotonic() - start
    return report


def _probe_env_gpu(name: str, store: Any, adapters: list[Any]) -> list[Check]:
    """The GPU probe in environment ``name`` with each usable runtime (slow: containers)."""
    from venvoy.store.forms import ensure_native
    from venvoy.store.records import get

    out: list[Check] = []
    try:
        env = get(name, store)
    except VenvoyError:
        return out
    for rt in adapters:
        try:
            image = ensure_native(store, rt, env.archive, env.image_id, env.tag)
        except VenvoyError as exc:
            out.append(Check("gpu", f"{rt.name} probe", FAIL, exc.message, exc.hint))
            continue
        out.append(gpu_probe(rt, image, store.environ))
    return out


def exit_status(report: Report) -> int:
    """0 when nothing failed, 1 otherwise."""
    return 0 if report.ok else 1


__all__ = ["FAIL", "GPU_PROBE", "NA", "OK", "STATUSES", "WARN", "Check", "Host", "Report", "doctor",
           "exit_status", "gpu_probe", "mount_of"]
