"""Slurm's own commands: their argv, and their output parsed with bounds.

``sbatch --parsable`` submits (the script on stdin); ``scontrol show config``
says ``MaxArraySize``; a job's tasks come from one ``scontrol -o show job``
call (what slurmctld holds: live jobs and, for ``MinJobAge`` seconds, ended
ones; never behind, unlike the database) and, for the jobs it has forgotten,
one ``sacct -P -X`` call where the cluster keeps accounting. Without
accounting a forgotten job is UNKNOWN, and ``venvoy jobs`` says why. Waiting
polls with a growing pause.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from venvoy.core.errors import BadRequest, NotFound, RuntimeFailed, VenvoyError

#: The most output read from one Slurm command (a cluster's whole queue fits).
MAX_OUTPUT = 8 << 20
#: The most array task IDs one --array may name (Slurm's own MaxArraySize is at most 4000001).
MAX_ARRAY_INDEX = 4_000_000
#: States after which a task no longer changes.
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                      "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"})
JOB_ID_RE = re.compile(r"^[0-9]{1,12}$")
ARRAY_RE = re.compile(r"^(?P<ranges>[0-9]+(?:-[0-9]+(?::[0-9]+)?)?(?:,[0-9]+(?:-[0-9]+(?::[0-9]+)?)?)*)?"
                      r"(?:%(?P<throttle>[0-9]+))?$")


def tool(name: str, environ: Mapping[str, str] | None = None) -> str:
    """The path of Slurm command ``name``, or one line saying it is not here."""
    from venvoy.runtime.base import which

    env = os.environ if environ is None else environ
    path = which(name, env.get("PATH", os.defpath))
    if path is None:
        raise NotFound(f"{name} not found on PATH: this is not a Slurm login node",
                       "run on a node where Slurm's commands work (or load its module)")
    return path


def run_tool(argv: Sequence[str], *, input: str | None = None, timeout: float = 60,
             environ: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a Slurm command; its output cut to :data:`MAX_OUTPUT` characters."""
    try:
        proc = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                              errors="replace", timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL,
                              env=dict(os.environ if environ is None else environ))
    except subprocess.TimeoutExpired:
        raise RuntimeFailed(f"{os.path.basename(argv[0])} did not answer within {timeout:.0f} s",
                            "check that slurmctld is up (`scontrol ping`)") from None
    except OSError as exc:
        raise RuntimeFailed(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    proc.stdout = proc.stdout[:MAX_OUTPUT]
    proc.stderr = proc.stderr[:MAX_OUTPUT]
    return proc


def last_line(text: str, limit: int = 300) -> str:
    from venvoy.cluster.script import comment

    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    line = comment(lines[-1]) if lines else "(no output)"
    return line if len(line) <= limit else line[: limit - 3] + "..."


# -- arrays -------------------------------------------------------------------------------

@dataclass
class ArraySpec:
    """A parsed ``--array`` value: its task IDs (unless only a throttle) and throttle."""

    text: str
    count: int          # how many task IDs (0: only a throttle)
    last: int           # the largest task ID (-1: none)
    throttle: int | None
    ranges: list[range] = field(default_factory=list)

    def __contains__(self, task: object) -> bool:
        return isinstance(task, int) and any(task in r for r in self.ranges)


def parse_array(text: str) -> ArraySpec:
    """Check an ``--array`` value (``0-99``, ``1,3,5-9:2``, ``0-99%10``, ``%10``)."""
    m = ARRAY_RE.fullmatch(text)
    if not m or not text:
        raise BadRequest(f"bad --array {comment_of(text)}",
                         "write it as Slurm does: 0-99, 1,3,5-9:2, and %N to run at most N at once")
    ranges: list[range] = []
    for part in (m.group("ranges") or "").split(","):
        if not part:
            continue
        rng, _, step_s = part.partition(":")
        lo_s, _, hi_s = rng.partition("-")
        lo, hi, step = int(lo_s), int(hi_s or lo_s), int(step_s or 1)
        if hi < lo or step < 1 or hi > MAX_ARRAY_INDEX:
            raise BadRequest(f"bad --array {comment_of(text)}: range {part} is empty or too large",
                             f"give ranges LOW-HIGH with LOW <= HIGH <= {MAX_ARRAY_INDEX}")
        ranges.append(range(lo, hi + 1, step))
    throttle = int(m.group("throttle")) if m.group("throttle") is not None else None
    if throttle == 0:
        raise BadRequest(f"bad --array {comment_of(text)}: %0 would run no task", "use %1 or more")
    total = sum(len(r) for r in ranges)
    if total <= 1_000_000:  # overlapping ranges name a task once
        total = len(set().union(*ranges)) if ranges else 0
    last = max((r[-1] for r in ranges), default=-1)
    return ArraySpec(text, total, last, throttle, ranges)


def comment_of(text: str) -> str:
    from venvoy.cluster.script import comment

    return repr(comment(text[:80]))


def max_array_size(environ: Mapping[str, str] | None = None) -> int | None:
    """The cluster's ``MaxArraySize`` (task IDs must be below it), or None if not said."""
    proc = run_tool([tool("scontrol", environ), "show", "config"], environ=environ)
    if proc.returncode != 0:
        raise RuntimeFailed(f"scontrol show config failed: {last_line(proc.stderr)}",
                            "check that slurmctld is up (`scontrol ping`)")
    m = re.search(r"^MaxArraySize\s*=\s*([0-9]{1,9})\s*$", proc.stdout, re.M)
    return int(m.group(1)) if m else None


# -- submitting -----------------------------------------------------------------------------

def submit(argv: Sequence[str], script: str, *, cwd: str | None = None,
           environ: Mapping[str, str] | None = None) -> str:
    """``sbatch --parsable ...`` with the script on stdin; the job ID."""
    try:
        proc = subprocess.run(list(argv), input=script, capture_output=True, text=True,
                              errors="replace", timeout=120, cwd=cwd,
                              env=dict(os.environ if environ is None else environ))
    except subprocess.TimeoutExpired:
        raise RuntimeFailed("sbatch did not answer within 120 s",
                            "check that slurmctld is up (`scontrol ping`)") from None
    except OSError as exc:
        raise RuntimeFailed(f"cannot run sbatch: {exc.strerror or exc}") from None
    if proc.returncode != 0:
        raise RuntimeFailed(f"Slurm refused the job: {last_line(proc.stderr[:MAX_OUTPUT])}",
                            "fix the option it names (see `venvoy submit --help`); nothing was "
                            "submitted")
    job_id = proc.stdout.strip().split(";")[0]
    if not JOB_ID_RE.match(job_id):
        # a site's sbatch wrapper that drops --parsable still says which job it made
        m = re.search(r"^Submitted batch job ([0-9]{1,12})\b", proc.stdout, re.M)
        if m is None:
            raise RuntimeFailed(f"sbatch printed no job ID: {last_line(proc.stdout[:4096])}",
                                "sbatch succeeded, so a job may have been submitted: look with "
                                "`squeue --me` and cancel it with scancel")
        job_id = m.group(1)
    return job_id


def cancel(job_id: str, environ: Mapping[str, str] | None = None) -> None:
    check_job_id(job_id)
    proc = run_tool([tool("scancel", environ), job_id], environ=environ)
    if proc.returncode != 0:
        raise RuntimeFailed(f"scancel {job_id} failed: {last_line(proc.stderr)}")


def check_job_id(job_id: str) -> str:
    if not JOB_ID_RE.match(job_id):
        raise BadRequest(f"bad job ID {comment_of(job_id)}", "give the number sbatch printed")
    return job_id


# -- states ------------------------------------------------------------------------------------

@dataclass
class TaskState:
    """One task (or a still-pending range of array tasks) of a job."""

    job_id: str        # the job's ID (the array's, for an array task)
    task: str          # the array index, a pending range ("[5-99%10]"), or "" for a plain job
    state: str         # PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, ...
    exit_code: int | None
    signal: int | None
    elapsed: str
    nodes: str

    @property
    def done(self) -> bool:
        return self.state in TERMINAL and not self.task.startswith("[")

    def status(self) -> int:
        """The task's exit status as a shell gives it: its code, 128+signal, or 1
        for a task ended by Slurm (cancelled, timed out) without either."""
        if self.exit_code:
            return self.exit_code
        if self.signal:
            return 128 + self.signal
        return 0 if self.state == "COMPLETED" else 1

    def as_dict(self) -> dict[str, object]:
        return {"task": self.task, "state": self.state, "exit_code": self.exit_code,
                "signal": self.signal, "elapsed": self.elapsed, "nodes": self.nodes}


def parse_exit(text: str) -> tuple[int | None, int | None]:
    """``CODE:SIGNAL`` as Slurm prints it; out of range (an exit status is 0-255, a
    signal 0-127) is unknown, never a status that wraps around to 0."""
    m = re.match(r"^([0-9]{1,3}):([0-9]{1,3})$", text.strip())
    if not m or int(m.group(1)) > 255 or int(m.group(2)) > 127:
        return (None, None)
    return (int(m.group(1)), int(m.group(2)))


SACCT_FIELDS = "JobID,State,ExitCode,Elapsed,NodeList,Submit"


def parse_sacct(text: str, wanted: Iterable[str]) -> list[TaskState]:
    """``sacct -n -P -X -o`` :data:`SACCT_FIELDS` lines of ``wanted`` jobs. A job ID
    the database holds twice (a cluster whose state was reset reuses IDs) is the
    latest submitted one."""
    want = set(wanted)
    latest: dict[tuple[str, str], tuple[str, TaskState]] = {}
    for line in text.splitlines()[:1_000_000]:
        fields = line.split("|")
        if len(fields) < 6:
            continue
        jid, state, code, elapsed, nodes, submit = fields[:6]
        base, _, task = jid.partition("_")
        if base not in want or not JOB_ID_RE.match(base):
            continue
        exit_code, sig = parse_exit(code)
        t = TaskState(base, task[:64], (state.split() or ["?"])[0][:32], exit_code, sig,
                      elapsed[:32], nodes[:256])
        key = (base, t.task)
        if key not in latest or submit >= latest[key][0]:
            latest[key] = (submit, t)
    newest = {b: max(s for (bb, _), (s, _t) in latest.items() if bb == b)
              for b in {k[0] for k in latest}}
    # a reused ID: only the tasks of its latest submission (an old array's tasks go)
    return [t for (b, _), (s, t) in latest.items() if s[:16] >= newest[b][:16]]


def parse_scontrol(text: str, wanted: Iterable[str]) -> list[TaskState]:
    """``scontrol -o show job`` (one record a line, ``Key=Value`` words) of ``wanted`` jobs."""
    want = set(wanted)
    out = []
    for line in text.splitlines()[:1_000_000]:
        rec: dict[str, str] = {}
        for word in line.split():
            key, sep, value = word.partition("=")
            if sep and key not in rec:
                rec[key] = value
        jid = rec.get("JobId", "")
        base = rec.get("ArrayJobId", jid)
        if base not in want or not JOB_ID_RE.match(base):
            continue
        task = rec.get("ArrayTaskId", "")
        if task and not task.isdigit():
            task = f"[{task}]"  # still-pending tasks, as sacct shows them
        exit_code, sig = parse_exit(rec.get("ExitCode", ""))
        nodes = rec.get("NodeList", "")
        out.append(TaskState(base, task[:64], rec.get("JobState", "?")[:32], exit_code, sig,
                             rec.get("RunTime", "")[:32], "" if nodes == "(null)" else nodes[:256]))
    return out


_accounting: dict[str, bool] = {}


def has_accounting(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``sacct`` answers here (a cluster without slurmdbd says it is disabled)."""
    env = os.environ if environ is None else environ
    key = env.get("SLURM_CONF", "")
    if key not in _accounting:
        path = None
        try:
            path = tool("sacct", env)
        except NotFound:
            _accounting[key] = False
        if path is not None:
            proc = run_tool([path, "-n", "-P", "-X", "-j", "1", "-o", "JobID"], environ=env)
            _accounting[key] = proc.returncode == 0 and "disabled" not in proc.stderr
    return _accounting[key]


def query(job_ids: Sequence[str], environ: Mapping[str, str] | None = None) -> list[TaskState]:
    """The tasks of ``job_ids``: from slurmctld (``scontrol``, one call: live jobs and
    those ended less than MinJobAge ago, never behind), then from the accounting
    database (``sacct``, one call) for the jobs slurmctld has forgotten."""
    ids = [check_job_id(j) for j in job_ids]
    if not ids:
        return []
    found = scontrol_tasks(ids, environ)
    missing = sorted(set(ids) - {t.job_id for t in found}, key=int)
    if missing and has_accounting(environ):
        proc = run_tool([tool("sacct", environ), "-n", "-P", "-X", "-j", ",".join(missing),
                         "-o", SACCT_FIELDS], environ=environ)
        if proc.returncode == 0:
            found += parse_sacct(proc.stdout, missing)
    return found


def scontrol_tasks(ids: Sequence[str], environ: Mapping[str, str] | None) -> list[TaskState]:
    argv = [tool("scontrol", environ), "-o", "show", "job"]
    if len(ids) == 1:
        argv.append(ids[0])
    proc = run_tool(argv, environ=environ)
    if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
        raise RuntimeFailed(f"scontrol show job failed: {last_line(proc.stderr)}",
                            "check that slurmctld is up (`scontrol ping`)")
    return parse_scontrol(proc.stdout, ids)


def all_done(tasks: Sequence[TaskState]) -> bool:
    return bool(tasks) and all(t.done for t in tasks)


def worst_status(tasks: Sequence[TaskState]) -> int:
    """The job's status: 0 when every task succeeded, else the worst task's."""
    return max((t.status() for t in tasks), default=1)


def poll(job_id: str, *, timeout: float | None = None, environ: Mapping[str, str] | None = None,
         first: float = 0.25, most: float = 10.0,
         on_tasks: Callable[[list[TaskState]], None] | None = None) -> list[TaskState]:
    """Query until every task of ``job_id`` is done; the pause grows from ``first``
    to ``most`` seconds. A job Slurm no longer knows is an error (no accounting)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = first
    unknown = 0
    while True:
        tasks = query([job_id], environ)
        if on_tasks is not None:
            on_tasks(tasks)
        if all_done(tasks):
            return tasks
        if not tasks:
            unknown += 1
            if unknown >= 3:
                raise NotFound(f"Slurm does not know job {job_id} (any more)",
                               "without accounting (sacct), Slurm forgets a job MinJobAge "
                               "seconds after it ends; look at its output file")
        if deadline is not None and time.monotonic() + pause > deadline:
            raise VenvoyError(f"job {job_id} is not done after {timeout:.0f} s",
                              f"wait longer (`venvoy wait {job_id}`) or cancel it")
        time.sleep(pause)
        pause = min(most, pause * 1.5)


__all__ = ["ArraySpec", "TaskState", "all_done", "cancel", "has_accounting", "max_array_size",
           "parse_array", "parse_sacct", "parse_scontrol", "poll", "query", "submit", "tool",
           "worst_status"]
