"""The jobs ``venvoy submit`` gave Slurm: one record each in the store, and :class:`Job`.

A record (``<store>/jobs/<id>.json``, written atomically) keeps what Slurm does
not: the environment, the script as submitted, where its output goes. States
and exit codes always come from Slurm itself (:mod:`venvoy.cluster.slurm`).
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from venvoy.cluster import slurm
from venvoy.core.errors import BadRequest, NotFound, VenvoyError
from venvoy.core.fs import atomic_write
from venvoy.store.layout import Store

#: The largest record read back (a script with a long --array-file fits).
MAX_RECORD = 32 << 20


class Job:
    """A submitted job: ``id``, ``script``, and Slurm's view of it on demand."""

    def __init__(self, record: dict[str, Any], store: Store | None = None) -> None:
        self.record = record
        self.store = store or Store()
        self.environ: Mapping[str, str] = self.store.environ

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, environment={self.environment!r})"

    @property
    def id(self) -> str:
        return str(self.record["id"])

    @property
    def script(self) -> str:
        return str(self.record["script"])

    @property
    def environment(self) -> str:
        return str(self.record.get("environment", ""))

    def tasks(self) -> list[slurm.TaskState]:
        return slurm.query([self.id], self.environ)

    def state(self) -> str:
        """One word: PENDING, RUNNING, COMPLETED, FAILED, ... (the worst of an array's
        tasks once all are done; RUNNING while any runs), or UNKNOWN."""
        return summarize(self.tasks())

    def exit_codes(self) -> dict[str, int | None]:
        """Each finished task's exit status (array index, or "" for a plain job)."""
        return {t.task: (t.status() if t.done else None) for t in self.tasks()}

    def wait(self, timeout: float | None = None) -> int:
        """Wait until every task is done; the job's status (an array: the worst task's)."""
        return slurm.worst_status(slurm.poll(self.id, timeout=timeout, environ=self.environ))

    def cancel(self) -> None:
        slurm.cancel(self.id, self.environ)

    def log_path(self, task: int | None = None, *, error: bool = False) -> Path:
        """The output file of the job, or of array task ``task``."""
        pattern = str(self.record.get("error" if error else "output") or self.record["output"])
        array = self.record.get("array_tasks")
        if array and task is None:
            raise BadRequest(f"job {self.id} is an array of {array} tasks", "say which with --task N")
        if task is not None and not array:
            raise BadRequest(f"job {self.id} is not an array", "leave out --task")
        if task is not None and not 0 <= task <= slurm.MAX_ARRAY_INDEX:
            raise BadRequest(f"no array task {task}", f"give a task ID from 0 to "
                             f"{slurm.MAX_ARRAY_INDEX} (see `venvoy jobs`)")
        spec_text = self.record.get("array")
        if task is not None and isinstance(spec_text, str) and spec_text:
            try:
                spec = slurm.parse_array(spec_text)
            except BadRequest:
                spec = None
            if spec is not None and task not in spec:
                raise BadRequest(f"job {self.id} has no array task {task} (its tasks: "
                                 f"{spec_text.split('%')[0]})", "give one of its task IDs")
        path = expand_pattern(pattern, self.id, task, str(self.record.get("job_name", "")),
                              str(self.record.get("user", "")))
        return Path(self.record.get("cwd", "/"), path)

    def logs(self, task: int | None = None, *, error: bool = False, limit: int = 64 << 20) -> str:
        """The output (or ``error``) file's text so far (its last ``limit`` bytes)."""
        path = self.log_path(task, error=error)
        try:
            with open_log(path) as fh:
                size = os.fstat(fh.fileno()).st_size
                if size > limit:
                    fh.seek(size - limit)
                return fh.read(limit).decode(errors="replace")
        except FileNotFoundError:
            raise NotFound(f"no output file {path} (yet)",
                           "the task may not have started; see `venvoy jobs`") from None
        except OSError as exc:
            raise VenvoyError(f"cannot read {path}: {exc.strerror or exc}") from None

    def follow(self, task: int | None, write: Callable[[str], None], *, first: float = 0.25,
               most: float = 5.0) -> int:
        """Write the output as it grows until the job is done; its status."""
        path = self.log_path(task)
        offset, pause = 0, first
        while True:
            tasks = self.tasks()
            finished = slurm.all_done(tasks) or not tasks
            try:
                with open_log(path) as fh:
                    fh.seek(offset)
                    data = fh.read(1 << 20)
            except FileNotFoundError:
                data = b""
            except OSError as exc:
                raise VenvoyError(f"cannot read {path}: {exc.strerror or exc}") from None
            if data:
                offset += len(data)
                write(data.decode(errors="replace"))
                pause = first
                continue
            if finished:
                return slurm.worst_status(tasks) if tasks else 0
            time.sleep(pause)
            pause = min(most, pause * 1.5)

    def as_dict(self, tasks: list[slurm.TaskState] | None = None) -> dict[str, Any]:
        rec = {k: v for k, v in self.record.items() if k != "script"}
        if tasks is not None:
            rec["state"] = summarize(tasks)
            rec["tasks"] = [t.as_dict() for t in tasks]
        return rec


def open_log(path: Path) -> BinaryIO:
    """An output file, opened for reading: a regular file of this user's (Slurm writes
    a job's output as its user), never a FIFO or device that a damaged record names."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
        os.close(fd)
        raise BadRequest(f"{path} is not a job output file of yours (not a regular file owned "
                         "by you)", "check the job's record (`venvoy jobs --json`)")
    return open(fd, "rb")


def summarize(tasks: list[slurm.TaskState]) -> str:
    if not tasks:
        return "UNKNOWN"
    states = {t.state for t in tasks}
    for live in ("RUNNING", "COMPLETING", "CONFIGURING", "PENDING", "SUSPENDED", "REQUEUED"):
        if live in states:
            return live
    if all(t.done for t in tasks):
        worst = max(tasks, key=lambda t: (t.status(), t.state != "COMPLETED"))
        return worst.state
    return sorted(states)[0]


def expand_pattern(pattern: str, job_id: str, task: int | None, job_name: str, user: str) -> str:
    """Slurm's filename pattern for one task: %j %A %a %x %u %% (others refused)."""
    values = {"j": job_id if task is None else "?", "A": job_id,
              "a": "" if task is None else str(task), "x": job_name, "u": user, "%": "%"}

    def repl(m: re.Match[str]) -> str:
        key = m.group(2)
        if key == "j" and task is not None:
            raise BadRequest(f"the output pattern {pattern!r} uses %j, which differs per array "
                             "task", "read the file by hand, or use %A_%a in --output")
        if key not in values:
            raise BadRequest(f"the output pattern {pattern!r} uses %{key}, which venvoy cannot "
                             "resolve", "read the file by hand, or use %A, %a, %j, %x in --output")
        value = values[key]
        width = m.group(1)
        return value.zfill(int(width)) if width and value.isdigit() else value

    return re.sub(r"%([0-9]?)([A-Za-z%])", repl, pattern)


def save(record: dict[str, Any], store: Store) -> Job:
    slurm.check_job_id(str(record["id"]))
    atomic_write(store.jobs / f"{record['id']}.json", json.dumps(record, indent=1) + "\n",
                 mode=0o600)
    return Job(record, store)


def load(job_id: str, store: Store | None = None) -> Job:
    store = store or Store()
    slurm.check_job_id(job_id)
    path = store.jobs / f"{job_id}.json"
    raw = b""
    try:
        # never through a link, never waiting on a FIFO; a regular file only
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with open(fd, "rb") as fh:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                raw = fh.read(MAX_RECORD + 1)
    except FileNotFoundError:
        raise NotFound(f"job {job_id} was not submitted with venvoy (from this store)",
                       "see `venvoy jobs`; for other jobs use squeue and sacct") from None
    except OSError:
        raw = b""
    try:
        record = json.loads(raw) if raw and len(raw) <= MAX_RECORD else None
    except ValueError:
        record = None
    if not isinstance(record, dict) or not valid_record(record, job_id):
        raise VenvoyError(f"the record {path} is damaged", "remove it")
    return Job(record, store)


def valid_record(record: dict[str, Any], job_id: str) -> bool:
    """The fields venvoy reads back have their types (a hand-edited record has not)."""
    strings = ("script", "output")
    optional = ("error", "job_name", "user", "environment", "cwd")
    array = record.get("array_tasks", 0)
    return (str(record.get("id")) == job_id
            and all(isinstance(record.get(k), str) for k in strings)
            and all(isinstance(record.get(k, ""), str) for k in optional)
            and os.path.isabs(str(record.get("cwd", "/")))
            and isinstance(array, int) and not isinstance(array, bool) and array >= 0)


def list_jobs(store: Store | None = None, limit: int = 200) -> list[Job]:
    """The newest ``limit`` jobs of this store, newest first."""
    store = store or Store()
    try:
        names = [n for n in os.listdir(store.jobs) if n.endswith(".json")]
    except FileNotFoundError:
        return []
    ids = sorted((n[:-5] for n in names if slurm.JOB_ID_RE.match(n[:-5])), key=int, reverse=True)
    out = []
    for job_id in ids[:limit]:
        try:
            out.append(load(job_id, store))
        except VenvoyError:
            continue
    return out


__all__ = ["Job", "expand_pattern", "list_jobs", "load", "save", "summarize"]
