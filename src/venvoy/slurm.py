"""Slurm jobs in an environment, from Python, on the same code path as ``venvoy submit``::

    import venvoy.slurm

    job = venvoy.slurm.submit("my-env", ["python3", "task.py"], time="00:10:00",
                              array="0-99%10")
    print(job.id, job.state())
    status = job.wait()              # the worst task's exit status
    print(job.exit_codes(), job.logs(task=0))

Options are ``venvoy submit``'s, with ``_`` for ``-`` (``ntasks_per_node``,
``array_file``, ``sbatch_args=[...]``, ``mounts=[...]``, ``env={...}``). A string
command is split with :func:`shlex.split`. ``dry_run=True`` returns the plan
(``.script``, ``.sbatch_argv``) and submits nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from venvoy.cluster.jobs import Job, list_jobs, load
from venvoy.cluster.submit import Plan, SubmitOptions, command_argv
from venvoy.cluster.submit import submit as _submit_options


def submit(env: str | None, cmd: str | Sequence[str], /, **options: Any) -> Any:
    """Prepare ``env``'s image once here and submit ``cmd`` as a Slurm job; a :class:`Job`
    (or, with ``dry_run=True``, a :class:`Plan`). ``env`` None needs ``image=...``."""
    argv = command_argv(cmd)
    return _submit_options(env, argv, SubmitOptions.from_kwargs(options))


def job(job_id: str | int) -> Job:
    """A job submitted earlier with venvoy (from this store)."""
    return load(str(job_id))


def jobs() -> list[Job]:
    """The jobs submitted with venvoy from this store, newest first."""
    return list_jobs()


__all__ = ["Job", "Plan", "job", "jobs", "submit"]
