"""``venvoy submit``: prepare once on the submitting node, then ``sbatch`` a script
that runs the runtime directly on the nodes.

Order (each step refuses bad input before anything is made or submitted):
options and ``--array-file`` are checked; ``sbatch`` must be on PATH; the array
is checked against the cluster's ``MaxArraySize``; the environment's record is
read; the runtime is chosen (Docker refused unless ``allow_docker``); the
runtime's form of the image is made (once, under the store's lock, as
``venvoy run`` makes it); the script is rendered from the adapter's frozen argv;
``sbatch`` gets it on stdin; the job's record is written to the store.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from venvoy.cluster import jobs, slurm
from venvoy.cluster.script import JobScript, comment, render
from venvoy.core.errors import BadRequest, VenvoyError
from venvoy.store.layout import Store

#: sbatch options taken by name (attribute -> option).
SBATCH_OPTIONS = {
    "time": "--time", "partition": "--partition", "account": "--account", "qos": "--qos",
    "nodes": "--nodes", "ntasks": "--ntasks", "ntasks_per_node": "--ntasks-per-node",
    "cpus_per_task": "--cpus-per-task", "mem": "--mem", "mem_per_cpu": "--mem-per-cpu",
    "gpus": "--gpus", "gpus_per_node": "--gpus-per-node", "gpus_per_task": "--gpus-per-task",
    "constraint": "--constraint", "job_name": "--job-name", "output": "--output",
    "error": "--error", "dependency": "--dependency", "array": "--array",
}
LAUNCHERS = ("srun", "none")
MPI_TYPES = ("pmix", "pmi2", "none", "auto")
#: The most lines an --array-file may have, and its largest size.
MAX_ARRAY_FILE_BYTES = 16 << 20
#: Keys of the config file's [slurm] table: site defaults, overridable per call.
CONFIG_KEYS = ("account", "partition", "qos", "time", "prologue", "mpi", "launcher")
#: What ranks in separate containers need, by srun --mpi (see docs/mpi.md): each
#: task is its own user namespace, so no cross-memory attach between ranks (Open
#: MPI 4.x vader / 5.x sm, MPICH CMA, UCX's /proc links); PMIx's native security
#: (Slurm's PMIx server offers modules a wheel's PMIx lacks: help-text noise).
#: Set in the container unless --env sets them.
MPI_ENV = {
    "any": (("OMPI_MCA_btl_vader_single_copy_mechanism", "none"),
            ("OMPI_MCA_btl_sm_single_copy_mechanism", "none")),
    "pmix": (("PMIX_MCA_psec", "native"),),
    "pmi2": (("MPIR_CVAR_CH4_CMA_ENABLE", "0"), ("UCX_POSIX_USE_PROC_LINK", "n")),
}


def mpi_env(mpi: str) -> list[str]:
    """``K=V`` defaults for an MPI job started by srun with ``--mpi=mpi``."""
    if mpi == "none":
        return []
    kinds = ["any", *(("pmix", "pmi2") if mpi == "auto" else (mpi,))]
    return [f"{k}={v}" for kind in kinds for k, v in MPI_ENV.get(kind, ())]


@dataclass
class SubmitOptions:
    """What ``venvoy submit`` takes, by the names of its command-line options."""

    time: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: str | None = None
    ntasks: str | None = None
    ntasks_per_node: str | None = None
    cpus_per_task: str | None = None
    mem: str | None = None
    mem_per_cpu: str | None = None
    gpus: str | None = None
    gpus_per_node: str | None = None
    gpus_per_task: str | None = None
    constraint: str | None = None
    job_name: str | None = None
    output: str | None = None
    error: str | None = None
    dependency: str | None = None
    array: str | None = None
    sbatch_args: list[str] = field(default_factory=list)
    # the run options of `venvoy run`
    runtime: str | None = None
    mounts: list[str] = field(default_factory=list)
    env: list[str] | Mapping[str, str] = field(default_factory=list)
    env_pass: list[str] = field(default_factory=list)
    workdir: str | None = None
    gpu: str | None = None
    # submit's own
    image: str | None = None
    array_file: str | None = None
    launcher: str | None = None
    mpi: str | None = None
    prologue: list[str] | None = None
    allow_docker: bool = False
    dry_run: bool = False

    def __post_init__(self) -> None:
        """From Python, a value may come as a number or, for a list, as one string:
        taken as the command line would give it (never a string's characters one by one)."""
        for attr in (*SBATCH_OPTIONS, "runtime", "workdir", "gpu", "image", "array_file",
                     "launcher", "mpi"):
            value = getattr(self, attr)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(self, attr, str(value))
            elif isinstance(value, os.PathLike):
                setattr(self, attr, os.fspath(value))
            elif value is not None and not isinstance(value, str):
                raise BadRequest(f"submit option {attr} must be a string, not "
                                 f"{type(value).__name__}", f"e.g. {attr}=\"...\"")
        for attr in ("sbatch_args", "mounts", "env_pass", "prologue"):
            value = getattr(self, attr)
            if isinstance(value, (str, os.PathLike)):
                value = [value]
            if value is None and attr == "prologue":
                continue
            if not isinstance(value, (list, tuple)) or not all(
                    isinstance(v, (str, os.PathLike)) for v in value):
                raise BadRequest(f"submit option {attr} must be a list of strings",
                                 f"e.g. {attr}=[\"...\"]")
            setattr(self, attr, [os.fspath(v) for v in value])
        if not isinstance(self.env, Mapping):
            self.env = [self.env] if isinstance(self.env, str) else self.env
            if not isinstance(self.env, (list, tuple)) or not all(
                    isinstance(v, str) for v in self.env):
                raise BadRequest("submit option env must be a dict or a list of NAME=VALUE",
                                 "e.g. env={\"OMP_NUM_THREADS\": \"4\"}")
            self.env = list(self.env)
        else:
            if not all(isinstance(k, str) and v is not None for k, v in self.env.items()):
                raise BadRequest("submit option env must map names to values",
                                 "e.g. env={\"OMP_NUM_THREADS\": \"4\"}")
            self.env = {k: v if isinstance(v, str) else str(v) for k, v in self.env.items()}

    @classmethod
    def from_kwargs(cls, options: Mapping[str, Any]) -> SubmitOptions:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise BadRequest(f"unknown submit option {unknown[0]!r}",
                             "see `venvoy submit --help` (options by their sbatch names, "
                             "with _ for -)")
        return cls(**dict(options))


def command_argv(cmd: object) -> list[str]:
    """The Python API's command: a string split as a shell would (never evaluated), or
    a sequence of strings (or paths)."""
    if isinstance(cmd, str):
        try:
            return shlex.split(cmd)
        except ValueError as exc:
            raise BadRequest(f"cannot split the command {cmd[:80]!r}: {exc}",
                             "quote it as a shell would, or give a list of words") from None
    if isinstance(cmd, Sequence) and all(isinstance(w, (str, os.PathLike)) for w in cmd):
        return [os.fspath(w) for w in cmd]
    raise BadRequest(f"the command must be a string or a list of strings, not "
                     f"{type(cmd).__name__}", "e.g. [\"python3\", \"task.py\"]")


def site_defaults(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The config file's ``[slurm]`` table, checked (see :mod:`venvoy.core.config`)."""
    from venvoy.core.config import load_config

    table = load_config(environ).get("slurm", {})
    if not isinstance(table, dict):
        raise VenvoyError("config file: [slurm] is not a table", "write it as [slurm] key = value")
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in CONFIG_KEYS:
            raise VenvoyError(f"config file: unknown key slurm.{key}",
                              f"use one of {', '.join(CONFIG_KEYS)}")
        if key == "prologue":
            lines = [value] if isinstance(value, str) else value
            if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
                raise VenvoyError("config file: slurm.prologue must be a string or a list of "
                                  "strings", "e.g. prologue = [\"module load apptainer\"]")
            out[key] = list(lines)
        elif isinstance(value, (str, int)) and not isinstance(value, bool):
            out[key] = str(value)
        else:
            raise VenvoyError(f"config file: slurm.{key} must be a string", "fix the config file")
    return out


#: sbatch options venvoy sets or relies on (its record, `venvoy logs`, the script's
#: environment), refused in --sbatch-arg: option -> what to do instead.
RESERVED_SBATCH = {
    "--wrap": "leave it out: venvoy writes the script",
    "--parsable": "leave it out: venvoy reads the job ID",
    "--export-file": "use --env or --env-pass",
    "--export": "use --env or --env-pass (the script passes the container an allow-list)",
    "--output": "use venvoy submit --output", "--error": "use venvoy submit --error",
    "--job-name": "use venvoy submit --job-name", "--array": "use venvoy submit --array",
    "--chdir": "cd to the directory before venvoy submit (its output files are found from there)",
    "--wait": "use venvoy submit --wait",
    "--test-only": "use venvoy submit --dry-run",
    "--clusters": "venvoy follows jobs of this cluster: submit on the other cluster's login node",
}
#: their short forms, and sbatch's short options that take no argument (a cluster
#: such as -Oo/etc/x is -O -o /etc/x).
RESERVED_SHORT = {"o": "--output", "e": "--error", "J": "--job-name", "a": "--array",
                  "D": "--chdir", "W": "--wait", "M": "--clusters"}
SHORT_FLAGS = set("hHOQsvVW")


def reserved_sbatch_option(arg: str) -> str | None:
    """The reserved option ``arg`` sets (sbatch takes any unambiguous prefix of a long
    option, and clusters of short ones), or None."""
    if arg.startswith("--"):
        name = arg.split("=")[0]
        if name in RESERVED_SBATCH:
            return name
        if len(name) > 2:
            for option in RESERVED_SBATCH:
                if option.startswith(name):
                    return option
        return None
    for char in arg[1:]:
        if char in RESERVED_SHORT:
            return RESERVED_SHORT[char]
        if char not in SHORT_FLAGS:
            break
    return None


def check_value(option: str, value: str) -> str:
    if not value or "\n" in value or "\0" in value or not value.isprintable():
        raise BadRequest(f"bad {option} {value[:80]!r}",
                         "give a non-empty value without newlines or control characters")
    return value


def read_array_file(path: str, max_lines: int | None = None) -> list[list[str]]:
    """One task per line; a line's words split as a shell would (never evaluated)."""
    try:
        # O_NONBLOCK: a FIFO (or a device) is refused below, never waited on
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with open(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise BadRequest(f"--array-file {path} is not a regular file",
                                 "give a text file with one task's arguments a line")
            raw = fh.read(MAX_ARRAY_FILE_BYTES + 1)
    except OSError as exc:
        raise BadRequest(f"cannot read --array-file {path}: {exc.strerror or exc}",
                         "give a text file with one task's arguments a line") from None
    if len(raw) > MAX_ARRAY_FILE_BYTES:
        raise BadRequest(f"--array-file {path} is larger than {MAX_ARRAY_FILE_BYTES >> 20} MiB",
                         "split it into several jobs")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise BadRequest(f"--array-file {path} is not UTF-8 text", "save it as UTF-8") from None
    if "\0" in text:
        raise BadRequest(f"--array-file {path} holds a NUL character", "save it as text")
    lines = text.splitlines()
    if max_lines is not None and len(lines) > max_lines:
        raise BadRequest(f"array too large: {len(lines)} lines in --array-file, and this "
                         f"cluster's MaxArraySize is {max_lines}", "split the work into several jobs")
    tasks = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise BadRequest(f"--array-file {path}: line {number} is empty",
                             "give one task a line (an empty task would run CMD alone)")
        if not any(c in line for c in "'\"\\"):  # no quoting: shlex's split, fast
            tasks.append([w for w in re.split(r"[ \t\r\n]+", line) if w])
            continue
        try:
            tasks.append(shlex.split(line, comments=False, posix=True))
        except ValueError as exc:
            raise BadRequest(f"--array-file {path}: line {number}: {exc}",
                             "quote the line as a shell would") from None
    if not tasks:
        raise BadRequest(f"--array-file {path} has no lines", "give one task a line")
    return tasks


@dataclass
class Plan:
    """A checked submission: the sbatch argv, the script, and what the record keeps."""

    sbatch_argv: list[str]
    script: str
    record: dict[str, Any]


def count(value: str | None) -> int:
    """A node or task count's upper end ("3", "2-4"): how many it may be."""
    if not value:
        return 1
    hi = value.split("-")[-1].split(":")[0]
    return int(hi) if hi.isdigit() else 1


def plan(name: str | None, cmd: Sequence[str], opts: SubmitOptions, *,
         store: Store | None = None, progress: Callable[[str], None] | None = None) -> Plan:
    """Everything up to ``sbatch``: checks, the image prepared (unless a dry run), the script."""
    from venvoy.core.version import __version__
    from venvoy.runtime.detect import choose_runtime, versions
    from venvoy.runtime.request import make_request, valid_env_name
    from venvoy.store.forms import ensure_native, planned_native

    store = store or Store()
    environ = store.environ
    if not cmd:
        raise BadRequest("no command given", "put the command after --, e.g. -- python3 task.py")
    if (name is None) == (opts.image is None):
        raise BadRequest("give an environment NAME or --image IMAGE (one of them)",
                         "e.g. venvoy submit my-env -- python3 task.py")
    defaults = site_defaults(environ)
    for key in ("account", "partition", "qos", "time"):
        if getattr(opts, key) is None and key in defaults:
            setattr(opts, key, defaults[key])
    launcher = opts.launcher or defaults.get("launcher")
    mpi = opts.mpi or defaults.get("mpi") or "auto"
    prologue = defaults.get("prologue", []) if opts.prologue is None else list(opts.prologue)
    if mpi not in MPI_TYPES:
        raise BadRequest(f"unknown --mpi {mpi!r}", f"use one of {', '.join(MPI_TYPES)}")
    for attr, option in SBATCH_OPTIONS.items():
        value = getattr(opts, attr)
        if value is not None:
            check_value(option, str(value))
    for arg in opts.sbatch_args:
        check_value("--sbatch-arg", arg)
        if not arg.startswith("-"):
            raise BadRequest(f"bad --sbatch-arg {arg[:80]!r}",
                             "give one sbatch option, e.g. --sbatch-arg=--exclusive")
        reserved = reserved_sbatch_option(arg)
        if reserved is not None:
            raise BadRequest(f"--sbatch-arg {comment(arg[:80])} sets {reserved}, which venvoy "
                             "sets itself", RESERVED_SBATCH[reserved])
    for line in prologue:
        if "\n" in line or "\0" in line:
            raise BadRequest("a prologue line holds a newline or NUL", "give one line per entry")
    # bash cannot run a script holding a NUL byte: refused here, not on the nodes
    env_values = list(opts.env.values()) if isinstance(opts.env, Mapping) else list(opts.env)
    for what, values in (("the command", list(cmd)), ("--env", env_values),
                         ("--mount", opts.mounts), ("--workdir", [opts.workdir or ""]),
                         ("--image", [opts.image or ""])):
        if any("\0" in str(v) for v in values):
            raise BadRequest(f"{what} holds a NUL character", "a job script cannot carry it; "
                             "leave it out")
    # -- arrays
    array_args: dict[int, list[str]] | None = None
    spec = slurm.parse_array(opts.array) if opts.array is not None else None
    if opts.array_file is not None:
        if spec is not None and spec.count:
            raise BadRequest("--array-file gives the tasks; --array may then only be %N",
                             "drop the range from --array (keep %N to limit tasks at once)")
        # the cluster's limit first, so a huge file's lines are counted, not parsed
        limit = slurm.max_array_size(environ) if _has("scontrol", environ) else None
        lines = read_array_file(opts.array_file, max_lines=limit)
        array_args = dict(enumerate(lines))
        text = f"0-{len(lines) - 1}" + (f"%{spec.throttle}" if spec and spec.throttle else "")
        spec = slurm.parse_array(text)
    elif spec is not None and not spec.count:
        raise BadRequest(f"--array {opts.array!r} names no tasks", "e.g. --array 0-99%10")
    ntasks = max(count(opts.ntasks), count(opts.nodes) * count(opts.ntasks_per_node))
    if launcher is None:
        launcher = "srun" if ntasks > 1 or count(opts.nodes) > 1 else "none"
    if launcher not in LAUNCHERS:
        raise BadRequest(f"unknown --launcher {launcher!r}", "use srun or none")
    for n in opts.env_pass:
        if not valid_env_name(n):
            raise BadRequest(f"bad --env-pass {n!r}", "give a variable name such as OMP_NUM_THREADS")
    # -- Slurm is here, and the array fits
    sbatch = None if opts.dry_run else slurm.tool("sbatch", environ)
    if spec is not None and spec.count and (not opts.dry_run or _has("scontrol", environ)):
        limit = slurm.max_array_size(environ)
        if limit is not None and spec.last >= limit:
            what = (f"{spec.count} lines in --array-file" if array_args is not None
                    else f"task ID {spec.last}")
            raise BadRequest(f"array too large: {what}, and this cluster's MaxArraySize is {limit} "
                             f"(task IDs 0-{limit - 1})",
                             "split the work into several jobs")
    # -- the environment and the runtime
    environment = None
    if name is not None:
        from venvoy.store.records import get

        environment = get(name, store)
    rt = choose_runtime(opts.runtime, environ).runtime
    if rt.escapes_job_limits and not opts.allow_docker:
        raise BadRequest(f"{rt.name} runs containers outside the job (its daemon starts them), so "
                         "Slurm's CPU, memory and time limits would not hold",
                         f"use --runtime apptainer, podman or charliecloud, or pass --allow-docker "
                         f"to use {rt.name} anyway")
    env_pairs: list[str] | Mapping[str, str] = opts.env
    extra_env = mpi_env(mpi) if launcher == "srun" else []
    if extra_env:
        names = set(env_pairs) if isinstance(env_pairs, Mapping) else {
            e.partition("=")[0] for e in env_pairs}
        extra = [e for e in extra_env if e.partition("=")[0] not in names]
        env_pairs = ({**dict(e.split("=", 1) for e in extra), **env_pairs}
                     if isinstance(env_pairs, Mapping) else [*extra, *env_pairs])
    # environ={}: nothing of the submitting shell is frozen in; each task forwards its own
    req = make_request(opts.image or "environment", list(cmd), mounts=opts.mounts, env=env_pairs,
                       workdir=opts.workdir, gpu=opts.gpu, tty=False, environ={})
    forward = rt.env_forward(req)
    if forward is None:
        raise BadRequest(f"{rt.name} cannot take a task's variables at run time, which a job needs",
                         "use --runtime apptainer, podman or charliecloud")
    image_digest = ""
    if environment is not None:
        if opts.dry_run:
            req.image = planned_native(store, rt, environment.image_id, environment.tag)
        else:
            req.image = ensure_native(store, rt, environment.archive, environment.image_id,
                                      environment.tag, progress)
        image_digest = f"image {environment.image_id}"
        check = store.sif_check(environment.image_id)
        if req.image == str(store.sif(environment.image_id)) and check.is_file():
            image_digest += f", SIF sha256:{check.read_text()[:64]}"
    form = rt.image_kind
    from venvoy.runtime.base import ImageForm

    check_image = form is not ImageForm.REF and "://" not in req.image
    if check_image and not opts.dry_run:
        req.image = os.path.abspath(req.image)
    inv = rt.invocation(req) if not opts.dry_run else None
    argv = inv.argv if inv is not None else rt.run_argv(req)
    penv = inv.env if inv is not None else rt.process_env(req)
    frozen = sorted((k, v) for k, v in penv.items() if rt.environ.get(k) != v)
    # -- sbatch's argv
    # an image's file name may hold anything: shown escaped in Slurm's job name and comment
    env_label = name or comment(os.path.basename(req.image))
    job_name = opts.job_name or f"venvoy-{env_label}"[:120]
    user = _user()
    output = opts.output or ("slurm-%A_%a.out" if spec is not None else "slurm-%j.out")
    sb = [sbatch or "sbatch", "--parsable", f"--job-name={job_name}",
          f"--comment=venvoy environment {env_label}"
          + (f" identity {environment.identity[:12]}" if environment is not None else ""),
          f"--output={output}"]
    if opts.error:
        sb.append(f"--error={opts.error}")
    for attr, option in SBATCH_OPTIONS.items():
        value = getattr(opts, attr)
        if attr in ("job_name", "output", "error", "array") or value is None:
            continue
        sb.append(f"{option}={value}")
    if spec is not None:
        sb.append(f"--array={spec.text}")
    sb += opts.sbatch_args
    srun_args = ["--mpi=" + mpi] if mpi != "auto" else []
    versions_found = versions([rt], environ)
    job = JobScript(
        environment=env_label, argv=argv, forward=forward, image=req.image,
        check_image=check_image,
        identity=environment.identity if environment is not None else "",
        lock_hash=environment.lock_hash if environment is not None else "",
        image_digest=image_digest, runtime=rt.name,
        runtime_version=versions_found.get(rt.name) or "",
        venvoy_version=__version__, sbatch_argv=["sbatch", *sb[1:]], command=list(cmd),
        frozen_env=frozen, fixed_names=[k for k, _ in req.env],
        extra_names=list(opts.env_pass), array_args=array_args, launcher=launcher,
        srun_args=srun_args, prologue=prologue)
    script = render(job)
    record: dict[str, Any] = {
        "environment": env_label, "identity": job.identity, "runtime": rt.name,
        "image": req.image, "command": list(cmd), "job_name": job_name, "user": user,
        "cwd": os.getcwd(), "output": output, "error": opts.error or output,
        "array_tasks": spec.count if spec is not None else 0,
        "array": spec.text if spec is not None else "",
        "sbatch": ["sbatch", *sb[1:]], "script": script,
    }
    return Plan(sb, script, record)


def _has(name: str, environ: Mapping[str, str]) -> bool:
    from venvoy.runtime.base import which

    return which(name, environ.get("PATH", os.defpath)) is not None


def _user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def submit(name: str | None, cmd: Sequence[str], opts: SubmitOptions | None = None, *,
           store: Store | None = None,
           progress: Callable[[str], None] | None = None) -> jobs.Job | Plan:
    """Submit ``cmd`` in environment ``name``; a :class:`~venvoy.cluster.jobs.Job`
    (a :class:`Plan` for a dry run: nothing made, nothing submitted)."""
    import time

    store = store or Store()
    opts = opts or SubmitOptions()
    p = plan(name, cmd, opts, store=store, progress=progress)
    if opts.dry_run:
        return p
    job_id = slurm.submit(p.sbatch_argv, p.script, environ=store.environ)
    p.record["id"] = job_id
    p.record["submitted"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        return jobs.save(p.record, store)
    except OSError as exc:
        raise VenvoyError(f"job {job_id} was submitted, but its record could not be written: "
                          f"{exc.strerror or exc}", "watch it with squeue and sacct") from None


__all__ = ["CONFIG_KEYS", "LAUNCHERS", "MPI_TYPES", "SBATCH_OPTIONS", "Plan", "SubmitOptions",
           "command_argv", "plan", "read_array_file", "site_defaults", "submit"]
