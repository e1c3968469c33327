"""``venvoy submit``, ``jobs``, ``logs``, ``cancel``, ``wait``: Slurm jobs in an environment.

Thin: :mod:`venvoy.cluster.submit` prepares and submits, :mod:`venvoy.cluster.jobs`
and :mod:`venvoy.cluster.slurm` ask Slurm; the Python API (:mod:`venvoy.slurm`)
calls the same functions.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

COMMANDS = ("submit", "jobs", "logs", "cancel", "wait")

#: sbatch options by their own names (attribute, option, help).
SBATCH = (
    ("time", "--time", "time limit (sbatch's formats)"),
    ("partition", "--partition", "partition (default: the config file's, then Slurm's)"),
    ("account", "--account", "account to charge"),
    ("qos", "--qos", "quality of service"),
    ("nodes", "--nodes", "nodes (N or MIN-MAX)"),
    ("ntasks", "--ntasks", "tasks (MPI ranks); more than one starts them with srun"),
    ("ntasks_per_node", "--ntasks-per-node", "tasks per node"),
    ("cpus_per_task", "--cpus-per-task", "CPUs per task"),
    ("mem", "--mem", "memory per node"),
    ("mem_per_cpu", "--mem-per-cpu", "memory per CPU"),
    ("gpus", "--gpus", "GPUs for the job"),
    ("gpus_per_node", "--gpus-per-node", "GPUs per node"),
    ("gpus_per_task", "--gpus-per-task", "GPUs per task"),
    ("constraint", "--constraint", "node features"),
    ("job_name", "--job-name", "job name (default: venvoy-ENV)"),
    ("output", "--output", "output file pattern (default: slurm-%%j.out, arrays slurm-%%A_%%a.out)"),
    ("error", "--error", "error file pattern (default: with the output)"),
    ("dependency", "--dependency", "start after other jobs (sbatch's syntax)"),
    ("array", "--array", "array task IDs, e.g. 0-99%%10 (with --array-file only %%N)"),
)


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the Slurm commands to the CLI's sub-commands."""
    p = sub.add_parser("submit", help="submit a Slurm job (or array) that runs in an environment",
                       usage="venvoy submit (NAME | --image IMAGE) [options] -- CMD [ARG...]",
                       description="Prepares the environment's image once, here, then submits a "
                       "job script that calls the runtime directly on the nodes (no venvoy there).")
    p.add_argument("name", nargs="?", help="the environment (see `venvoy list`)")
    p.add_argument("--image", help="instead of an environment: a .sif file, an image directory, "
                                   "or an image the runtime knows")
    for attr, option, text in SBATCH:
        p.add_argument(option, dest=attr, metavar="V", help=text)
    p.add_argument("--sbatch-arg", dest="sbatch_args", action="append", default=[], metavar="ARG",
                   help="any other sbatch option, as one word: --sbatch-arg=--exclusive (repeatable)")
    p.add_argument("--array-file", metavar="FILE",
                   help="one task per line; the line's words (shell-quoted, never evaluated) are "
                        "appended to CMD for that task")
    p.add_argument("--launcher", choices=["srun", "none"],
                   help="start each task with srun (default when more than one task)")
    p.add_argument("--mpi", choices=["pmix", "pmi2", "none", "auto"],
                   help="srun's --mpi for multi-task jobs (auto: the cluster's default)")
    p.add_argument("--prologue", action="append", metavar="LINE",
                   help="a shell line to run first, e.g. 'module load apptainer' (repeatable; "
                        "replaces the config file's)")
    p.add_argument("--runtime", metavar="R", help="as for `venvoy run`")
    p.add_argument("--mount", "-v", dest="mounts", action="append", default=[],
                   metavar="SRC:DST[:ro]", help="bind-mount a host path (repeatable)")
    p.add_argument("--env", "-e", action="append", default=[], metavar="K=V",
                   help="set a variable in the container (repeatable)")
    p.add_argument("--env-pass", action="append", default=[], metavar="NAME",
                   help="copy this variable of each task into its container (repeatable)")
    p.add_argument("--workdir", "-w", metavar="DIR", help="working directory in the container")
    p.add_argument("--gpu", choices=["nvidia", "amd"], help="pass the node's GPUs through")
    p.add_argument("--allow-docker", action="store_true",
                   help="allow Docker, whose containers escape the job's limits")
    p.add_argument("--dry-run", action="store_true", help="print the job script; submit nothing")
    p.add_argument("--wait", action="store_true",
                   help="wait for the job; exit with its status (an array: the worst task's)")
    p.add_argument("--json", action="store_true", help="print the job record as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")

    j = sub.add_parser("jobs", help="the jobs venvoy submitted, with Slurm's states")
    j.add_argument("--json", action="store_true", help="print JSON")
    j.add_argument("--all", action="store_true", help="also jobs Slurm no longer knows")

    lg = sub.add_parser("logs", help="print a job's output")
    lg.add_argument("job_id", metavar="JOBID")
    lg.add_argument("--task", type=int, metavar="N", help="the array task")
    lg.add_argument("--error", action="store_true", help="the error file, when it is separate")
    lg.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")

    c = sub.add_parser("cancel", help="cancel a job (scancel)")
    c.add_argument("job_id", metavar="JOBID")

    w = sub.add_parser("wait", help="wait for a job; exit with its status")
    w.add_argument("job_id", metavar="JOBID")
    w.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds")


def options(args: argparse.Namespace) -> Any:
    from venvoy.cluster.submit import SubmitOptions

    fields = set(SubmitOptions.__dataclass_fields__)
    return SubmitOptions(**{k: v for k, v in vars(args).items() if k in fields})


def cmd_submit(args: argparse.Namespace, command: list[str]) -> int:
    import json

    from venvoy.cluster.submit import Plan, submit
    from venvoy.core.progress import Reporter

    rep = Reporter(quiet=args.quiet or args.json or args.dry_run)
    try:
        result = submit(args.name, command, options(args), progress=rep.step)
    finally:
        rep.close()
    if isinstance(result, Plan):
        if args.json:
            print(json.dumps(result.record, indent=2))
        else:
            sys.stdout.write(result.script)
        return 0
    job = result
    if args.json and not args.wait:
        print(json.dumps(job.record, indent=2))
    elif not args.json:
        print(job.id)
        if not args.quiet:
            print(f"venvoy: submitted job {job.id} ({job.environment}); watch it with "
                  f"`venvoy jobs`, read it with `venvoy logs {job.id}`", file=sys.stderr)
    if args.wait:
        from venvoy.cluster import slurm

        try:
            tasks = slurm.poll(job.id, environ=job.environ)
        except KeyboardInterrupt:
            return stopped_waiting(job.id)
        if args.json:
            print(json.dumps(job.as_dict(tasks), indent=2))
        return slurm.worst_status(tasks)
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    import json

    from venvoy.cluster import jobs, slurm

    found = jobs.list_jobs()
    tasks = slurm.query([j.id for j in found]) if found else []
    by_job: dict[str, list[slurm.TaskState]] = {}
    for t in tasks:
        by_job.setdefault(t.job_id, []).append(t)
    rows = [j.as_dict(by_job.get(j.id, [])) for j in found
            if args.all or args.json or j.id in by_job]
    if args.json:
        print(json.dumps({"accounting": slurm.has_accounting(), "jobs": rows}, indent=2))
        return 0
    if not slurm.has_accounting():
        print("venvoy: this cluster keeps no accounting (sacct): finished jobs are shown only "
              "while Slurm remembers them (--all lists the others)", file=sys.stderr)
    if not rows:
        print("no jobs; submit one with `venvoy submit NAME -- CMD`", file=sys.stderr)
        return 0
    print(f"{'JOBID':<10}{'ENVIRONMENT':<22}{'STATE':<12}{'TASKS':<8}{'EXIT CODES':<24}ELAPSED")
    for r in rows:
        ts = r.get("tasks", [])
        codes = ",".join(f"{t['task']}:{t['exit_code']}" if t["task"] else str(t["exit_code"])
                         for t in ts if t["exit_code"] is not None and t["state"] in slurm.TERMINAL
                         and not t["task"].startswith("["))
        elapsed = max((t["elapsed"] for t in ts), default="")
        from venvoy.cluster.script import comment

        print(f"{r['id']:<10}{comment(str(r.get('environment', '')))[:21]:<22}{r['state']:<12}"
              f"{r.get('array_tasks') or 1:<8}{(codes or '-')[:23]:<24}{elapsed}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from venvoy.cluster import jobs

    job = jobs.load(args.job_id)
    if args.follow:
        def write(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        try:
            job.follow(args.task, write)
        except KeyboardInterrupt:
            return stopped_waiting(job.id)
        return 0
    sys.stdout.write(job.logs(args.task, error=args.error))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from venvoy.cluster import jobs

    jobs.load(args.job_id).cancel()
    # scancel says nothing about a job that had already ended: neither do we claim it.
    print(f"venvoy: asked Slurm to cancel job {args.job_id} (`venvoy wait {args.job_id}` "
          "shows how it ended)", file=sys.stderr)
    return 0


def stopped_waiting(job_id: str) -> int:
    """After Ctrl-C while waiting: the job itself goes on (130, as the shell's)."""
    print(f"\nvenvoy: stopped waiting; job {job_id} goes on (see `venvoy jobs`; stop it with "
          f"`venvoy cancel {job_id}`)", file=sys.stderr)
    return 130


def cmd_wait(args: argparse.Namespace) -> int:
    from venvoy.cluster import jobs

    job = jobs.load(args.job_id)
    try:
        return job.wait(timeout=args.timeout)
    except KeyboardInterrupt:
        return stopped_waiting(job.id)


def dispatch(args: argparse.Namespace, command: list[str] | None) -> int:
    """Run the Slurm command ``args.command`` (``command``: what followed ``--``)."""
    if args.command == "submit":
        if command is None:
            sys.stderr.write("venvoy: error: put the command after --, e.g. venvoy submit NAME "
                             "-- python3 task.py (see `venvoy submit --help`)\n")
            return 2
        return cmd_submit(args, command)
    handlers = {"jobs": cmd_jobs, "logs": cmd_logs, "cancel": cmd_cancel, "wait": cmd_wait}
    return handlers[args.command](args)


__all__ = ["COMMANDS", "add_parser", "dispatch"]
