"""The one run request every runtime adapter turns into its own argv.

Callers describe *what* to run (image, argv, mounts, environment, working
directory, GPU, user); adapters decide *how* in their runtime's syntax. The
defaults a careful user expects are applied once, here, in :func:`make_request`,
so every runtime gets the same ones.
"""

from __future__ import annotations

import os

from venvoy.core.errors import BadRequest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence



def valid_env_name(name: str) -> bool:
    """[A-Za-z_][A-Za-z0-9_]*, the portable shell variable name."""
    return name.isascii() and name.isidentifier()


class Gpu:
    """GPU vendors venvoy knows how to pass through (plain strings: enum's
    import is a noticeable share of `venvoy run`'s start-up)."""

    NVIDIA = "nvidia"
    AMD = "amd"
    ALL = (NVIDIA, AMD)


class Mount:
    """A bind mount of a host path at a container path.

    (Plain classes rather than dataclasses here: importing dataclasses costs
    more than the whole rest of ``venvoy run``.)
    """

    __slots__ = ("read_only", "source", "target")

    def __init__(self, source: str, target: str, read_only: bool = False) -> None:
        self.source = source
        self.target = target
        self.read_only = read_only

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mount) and (self.source, self.target, self.read_only) == (
            other.source, other.target, other.read_only)

    def __hash__(self) -> int:
        return hash((self.source, self.target, self.read_only))

    def __repr__(self) -> str:
        return f"Mount({self.source!r}, {self.target!r}, read_only={self.read_only!r})"

    @classmethod
    def parse(cls, spec: str, cwd: str | None = None) -> Mount:
        """Parse ``SRC:DST[:ro|rw]``; SRC must exist, DST must be absolute."""
        parts = spec.split(":")
        mode = "rw"
        if len(parts) == 3:
            mode = parts.pop()
        if len(parts) != 2 or not parts[0] or not parts[1] or mode not in ("ro", "rw"):
            raise BadRequest(
                f"bad mount {spec!r}",
                "write it as SRC:DST or SRC:DST:ro (paths may not contain ':')",
            )
        src, dst = parts
        src = os.path.abspath(os.path.join(cwd or os.getcwd(), os.path.expanduser(src)))
        if not os.path.exists(src):
            raise BadRequest(f"mount source {src!r} does not exist", "create it or fix the path")
        if not dst.startswith("/"):
            raise BadRequest(f"mount target {dst!r} is not absolute", "use a path starting with /")
        for path in (src, dst):
            if "," in path or "\n" in path:
                raise BadRequest(f"mount path {path!r} contains ',' or a newline", "rename it")
        return cls(src, os.path.normpath(dst), mode == "ro")

    def __str__(self) -> str:
        return f"{self.source}:{self.target}" + (":ro" if self.read_only else "")


class RunRequest:
    """Everything needed to run one command in one container, runtime-neutral."""

    __slots__ = ("argv", "env", "gid", "gpu", "image", "interactive", "mounts", "name", "tty",
                 "uid", "workdir")

    def __init__(
        self,
        image: str,
        argv: tuple[str, ...],
        mounts: tuple[Mount, ...] = (),
        env: tuple[tuple[str, str], ...] = (),
        workdir: str | None = None,
        interactive: bool = True,
        tty: bool = False,
        gpu: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        name: str | None = None,
    ) -> None:
        self.image = image
        #: The container's name where the runtime names containers (Docker,
        #: Podman): lets a later run find and remove one a killed venvoy left.
        self.name = name
        self.argv = tuple(argv)
        self.mounts = tuple(mounts)
        self.env = tuple(env)
        self.workdir = workdir
        self.interactive = interactive
        self.tty = tty
        self.gpu = gpu
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"RunRequest({fields})"

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)


#: What a bind mount's path cannot hold on every runtime: ':' separates SRC,
#: DST and options (-v, --bind, -b); ',' separates mounts (Apptainer) and
#: options (Podman); a newline breaks the one-line error and the runtimes' parsing.
MOUNT_UNSAFE = (":", ",", "\n")


def check_cwd(cwd: str) -> None:
    """The current directory is mounted at the same path: refuse one that no
    runtime's mount syntax can express, with what to do, as --mount is refused."""
    bad = [c for c in MOUNT_UNSAFE if c in cwd]
    if bad:
        shown = " or ".join("a newline" if c == "\n" else repr(c) for c in bad)
        raise BadRequest(
            f"the current directory {cwd!r} contains {shown}, which container runtimes "
            "cannot mount (it is mounted at the same path, as the working directory)",
            "cd to a directory whose path has no ':' or ',' and run from there; "
            "mount what you need with --mount SRC:DST from a path without them")


def parse_env(items: Iterable[str]) -> list[tuple[str, str]]:
    """Parse ``K=V`` strings; the value is kept byte-exact (it may hold '=')."""
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not valid_env_name(name):
            raise BadRequest(f"bad --env {item!r}", "write it as NAME=VALUE")
        out.append((name, value))
    return out


#: Host variables that say which GPUs this job may use. Each is passed into
#: every container when set on the host (Apptainer's --cleanenv and
#: Charliecloud's --unset-env would drop it, and a job given GPU 3 would
#: compute on GPU 0); "SLURM_*GPU*" stands for every Slurm variable with GPU
#: in its name (SLURM_JOB_GPUS, SLURM_STEP_GPUS, SLURM_GPUS_ON_NODE, ...).
GPU_ENV_PASS = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
                "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "SLURM_*GPU*")


def gpu_env(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """The :data:`GPU_ENV_PASS` variables set in ``environ``, in a stable order."""
    pairs = [(name, environ[name]) for name in GPU_ENV_PASS if "*" not in name and name in environ]
    pairs += sorted((k, v) for k, v in environ.items()
                    if k.startswith("SLURM_") and "GPU" in k[6:] and valid_env_name(k))
    return pairs


#: What a job's task passes into its container, by name, besides ``--env``: Slurm's
#: variables (which task, which node, which array index), what an MPI launch needs
#: (PMI, PMIx, Open MPI, MPICH/Hydra, Intel MPI, UCX, libfabric), the GPUs the task was
#: given and its TMPDIR. Never PYTHONPATH, VIRTUAL_ENV or CONDA_*: the host's Python
#: stays out. Used by ``venvoy run`` inside a job (SLURM_JOB_ID set) and by the
#: scripts of ``venvoy submit``, where the names are chosen when each task starts.
JOB_ENV_NAMES = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
                 "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "TMPDIR")
JOB_ENV_PREFIXES = ("SLURM_", "PMI_", "PMIX_", "OMPI_", "PRTE_", "HYDRA_", "MPICH_", "MPIR_CVAR_",
                    "I_MPI_", "UCX_", "FI_")


def job_env_allowed(name: str) -> bool:
    """Whether a task's variable ``name`` is on the job allow-list (see :data:`JOB_ENV_NAMES`)."""
    return (name in JOB_ENV_NAMES or name.startswith(JOB_ENV_PREFIXES)) and valid_env_name(name)


def job_env(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """Inside a Slurm job (SLURM_JOB_ID set): the allow-listed variables of ``environ``,
    sorted; outside one, nothing. ``venvoy run`` in an array task then sees its
    SLURM_ARRAY_TASK_ID without ``--env-pass``."""
    if not environ.get("SLURM_JOB_ID"):
        return []
    return sorted((k, v) for k, v in environ.items() if job_env_allowed(k))


def make_request(
    image: str,
    argv: Sequence[str],
    *,
    mounts: Iterable[str | Mount] = (),
    env: Iterable[str] | Mapping[str, str] = (),
    env_pass: Iterable[str] = (),
    workdir: str | None = None,
    gpu: str | None = None,
    tty: bool | None = None,
    mount_cwd: bool = True,
    environ: Mapping[str, str] | None = None,
) -> RunRequest:
    """Build a request with venvoy's defaults.

    * the current directory is bind-mounted at the same path and is the
      working directory, so relative paths mean the same inside and out;
    * the environment is clean except for ``env`` and the ``env_pass`` names
      copied from the host, plus ``PYTHONNOUSERSITE=1`` so packages in the
      user's ``~/.local`` never leak into the container, and the host's GPU
      allocation (:data:`GPU_ENV_PASS`), so a job given GPU 3 computes on GPU 3;
    * inside a Slurm job, the task's allow-listed variables (:func:`job_env`).
    """
    if not argv:
        raise BadRequest("no command given", "put the command after --, e.g. -- python3 x.py")
    if not image:
        raise BadRequest("no image given", "pass --image NAME, a .sif file or an image directory")
    host_env = os.environ if environ is None else environ
    cwd = os.getcwd()
    parsed_mounts = [m if isinstance(m, Mount) else Mount.parse(m, cwd) for m in mounts]
    if mount_cwd and not any(m.target == cwd for m in parsed_mounts):
        check_cwd(cwd)
        parsed_mounts.insert(0, Mount(cwd, cwd))
    pairs: list[tuple[str, str]] = [("PYTHONNOUSERSITE", "1"), *gpu_env(host_env),
                                    *job_env(host_env)]
    for name in env_pass:
        if not valid_env_name(name):
            raise BadRequest(f"bad --env-pass {name!r}", "give a variable name such as OMP_NUM_THREADS")
        if name in host_env:
            pairs.append((name, host_env[name]))
    if hasattr(env, "items"):
        for name in env:
            if not valid_env_name(name):
                raise BadRequest(f"bad variable name {name!r}", "use letters, digits and _")
        pairs += list(env.items())
    else:
        pairs += parse_env(env)
    merged = dict(pairs)  # later wins: --env overrides --env-pass overrides defaults
    if workdir is not None and not workdir.startswith("/"):
        raise BadRequest(f"working directory {workdir!r} is not absolute", "use a path starting with /")
    if gpu and gpu not in Gpu.ALL:
        raise BadRequest(f"unknown GPU kind {gpu!r}", "use --gpu nvidia or --gpu amd")
    gpu_kind = gpu or None
    if tty is None:
        tty = os.isatty(0) and os.isatty(1)
    return RunRequest(
        image=image,
        argv=tuple(argv),
        mounts=tuple(parsed_mounts),
        env=tuple(merged.items()),
        workdir=workdir or (cwd if mount_cwd else None),
        tty=tty,
        gpu=gpu_kind,
    )
