"""The job script of ``venvoy submit``: pure text from a typed :class:`JobScript`.

The script calls the runtime with a frozen argv, every value quoted with
:func:`shlex.quote`, so a compute node starts no Python and takes no lock. Each
task builds its runtime's environment from nothing (``env -i``): a few basics
for the runtime program itself, the variables the user set with ``--env``
(frozen), and the task's own variables on the allow-list
(:data:`venvoy.runtime.request.JOB_ENV_NAMES` and ``JOB_ENV_PREFIXES``: Slurm's,
MPI's, the GPUs', TMPDIR), chosen when the task starts because they differ per
task. How those reach the container is the runtime adapter's
(:class:`venvoy.runtime.base.EnvForward`). Nothing of the host's Python
(PYTHONPATH, VIRTUAL_ENV, CONDA_*) gets in.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from venvoy.runtime.base import EnvForward
from venvoy.runtime.request import JOB_ENV_NAMES, JOB_ENV_PREFIXES, valid_env_name

#: Variables the runtime program itself needs (never passed into the container
#: by this: Apptainer runs with --cleanenv, ch-run with --unset-env, Podman with -e only).
RUNTIME_BASICS = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "XDG_RUNTIME_DIR")
#: Exit status of a task that venvoy's script stopped (as the CLI's errors).
EXIT_SCRIPT_ERROR = 125


def comment(text: str) -> str:
    """``text`` safe inside a ``#`` comment: a newline or control character is
    shown escaped, so no value can end the comment and become code."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass
class JobScript:
    """Everything the script says and does, decided before it is written."""

    environment: str                      # the environment's name (checked), or the image
    argv: list[str]                       # the runtime's frozen argv (ends with the command)
    forward: EnvForward                   # how run-time variables reach the container
    image: str                            # the runtime's form: SIF, directory or image ID
    check_image: bool = True              # a file or directory that must still be there
    identity: str = ""
    lock_hash: str = ""
    image_digest: str = ""
    runtime: str = ""
    runtime_version: str = ""
    venvoy_version: str = ""
    sbatch_argv: list[str] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    #: variables for the runtime program, frozen (e.g. APPTAINERENV_X for --env X=...)
    frozen_env: list[tuple[str, str]] = field(default_factory=list)
    #: names set with --env: never overwritten by the task's own
    fixed_names: list[str] = field(default_factory=list)
    #: more names to pass from the task's environment (--env-pass)
    extra_names: list[str] = field(default_factory=list)
    #: per array task index, the words appended to the command (--array-file)
    array_args: dict[int, list[str]] | None = None
    #: "srun" to start every task with srun (its arguments in srun_args), or "none"
    launcher: str = "none"
    srun_args: list[str] = field(default_factory=list)
    #: shell lines run first (the site's `module load apptainer`); from the config
    #: file or --prologue: the user's own lines, as in any job script
    prologue: list[str] = field(default_factory=list)


def allow_words(extra: list[str]) -> str:
    """The allow-list as bash words that expand, without a fork, to the names of
    the variables it may hold: ``${!SLURM_@}`` for each prefix, then exact names
    (those not set, and shell variables that are not exported, are skipped)."""
    names = [*JOB_ENV_NAMES, *(n for n in extra if not n.startswith(JOB_ENV_PREFIXES))]
    for n in [*names, *JOB_ENV_PREFIXES]:
        if not valid_env_name(n):
            raise ValueError(f"not a variable name: {n!r}")
    return " ".join([*(f'"${{!{p}@}}"' for p in JOB_ENV_PREFIXES), *dict.fromkeys(names)])


def forward_words(args: tuple[str, ...]) -> list[str]:
    """Bash words for one variable (in ``venvoy_n``) from an adapter's argument templates."""
    words = []
    for template in args:
        parts = re.split(r"(\{name\}|\{value\})", template)
        word = ""
        for part in parts:
            if part == "{name}":
                word += '"$venvoy_n"'
            elif part == "{value}":
                word += '"${!venvoy_n}"'
            elif part:
                word += shlex.quote(part)
        words.append(word or "''")
    return words


def escape_lines(chars: str, indent: str) -> list[str]:
    """Bash lines that backslash-escape each of ``chars`` in ``venvoy_v`` (backslash first)."""
    order = sorted(set(chars), key=lambda c: c != "\\")
    out = []
    for c in order:
        if c.isalnum() or c == "\n":
            raise ValueError(f"cannot escape {c!r}")
        out.append(f"{indent}venvoy_v=${{venvoy_v//\\{c}/\\\\\\{c}}}")
    return out


def quote_all(words: list[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)


def render(job: JobScript) -> str:
    """The job script, as text. Valid bash (checked with ``bash -n`` in the tests)."""
    if not job.argv:
        raise ValueError("no runtime argv")
    fwd = job.forward
    cut = len(job.argv) - fwd.before if fwd.args else len(job.argv)
    if not 0 < cut <= len(job.argv):
        raise ValueError("the forwarded arguments' place is outside the argv")
    head, tail = job.argv[:cut], job.argv[cut:]
    lines = [
        "#!/bin/bash",
        "# venvoy job script, written by `venvoy submit`: the runtime is called directly,",
        "# with a frozen argv; no venvoy, no Python start and no lock on the compute nodes.",
        f"#   environment:   {comment(job.environment)}",
    ]
    if job.identity:
        lines.append(f"#   identity:      {comment(job.identity)}")
    if job.lock_hash:
        lines.append(f"#   lock hash:     {comment(job.lock_hash)}")
    lines.append(f"#   image:         {comment(job.image)}")
    if job.image_digest:
        lines.append(f"#   image digest:  {comment(job.image_digest)}")
    lines.append(f"#   runtime:       {comment(job.runtime)} {comment(job.runtime_version or '?')}")
    lines.append(f"#   venvoy:        {comment(job.venvoy_version)}")
    if job.command:
        lines.append(f"#   command:       {comment(shlex.join(job.command))}")
    if job.sbatch_argv:
        lines.append(f"#   submitted as:  {comment(shlex.join(job.sbatch_argv))} < this script")
    if job.array_args is not None:
        lines.append(f"#   array tasks:   {len(job.array_args)} (--array-file; words per task below)")
    lines += ["", "set -u"]
    if job.prologue:
        lines.append("# site prologue")
        lines += [line.rstrip("\n") for line in job.prologue]
    lines += ["", "venvoy_task() {",
              "    local venvoy_n venvoy_v",
              "    local -a venvoy_penv=() venvoy_args=() venvoy_extra=()",
              f"    local venvoy_image={shlex.quote(job.image)}"]
    if job.check_image:
        env_q = shlex.quote(comment(job.environment))
        lines += [
            '    if [ ! -e "$venvoy_image" ]; then',
            "        printf 'venvoy: error: the image of environment %s was removed after "
            "submission: %s (submit the job again: venvoy submit prepares the image)\\n' "
            f'{env_q} "$venvoy_image" >&2',
            f"        return {EXIT_SCRIPT_ERROR}",
            "    fi",
        ]
    lines += [
        "    # the runtime program's own basics, from this task's environment",
        f"    for venvoy_n in {' '.join(RUNTIME_BASICS)}; do",
        '        if [ -n "${!venvoy_n+x}" ]; then venvoy_penv+=("$venvoy_n=${!venvoy_n}"); fi',
        "    done",
        "    # this task's allow-listed variables (Slurm, MPI, GPUs, TMPDIR, --env-pass)",
        f"    for venvoy_n in {allow_words(job.extra_names)}; do",
        "        # exported ones only (set, and not a shell variable of the prologue)",
        '        [[ -n ${!venvoy_n+x} && ${!venvoy_n@a} == *x* ]] || continue',
    ]
    fixed = [n for n in dict.fromkeys(job.fixed_names) if valid_env_name(n)]
    if fixed:
        lines.append(f'        case "$venvoy_n" in {"|".join(fixed)}) continue ;; esac')
    if fwd.prefix is not None:
        if not valid_env_name(fwd.prefix + "X"):
            raise ValueError(f"bad prefix {fwd.prefix!r}")
        lines.append('        venvoy_v=${!venvoy_n}')
        lines += escape_lines(fwd.escape, "        ")
        lines.append(f'        venvoy_penv+=("{fwd.prefix}$venvoy_n=$venvoy_v")')
    else:
        lines.append('        venvoy_penv+=("$venvoy_n=${!venvoy_n}")')
    if fwd.args:
        lines.append(f"        venvoy_args+=({' '.join(forward_words(fwd.args))})")
    lines.append("    done")
    if job.frozen_env:
        lines.append("    # set at submission (--env, the runtime's own)")
        lines.append("    venvoy_penv+=(" + " ".join(
            shlex.quote(f"{k}={v}") for k, v in job.frozen_env) + ")")
    if job.array_args is not None:
        lines += ['    case "${SLURM_ARRAY_TASK_ID-}" in']
        for index in sorted(job.array_args):
            lines.append(f"        {int(index)}) venvoy_extra=({quote_all(job.array_args[index])}) ;;")
        lines += [
            "        *) printf 'venvoy: error: array task %s has no line in the --array-file\\n' "
            '"${SLURM_ARRAY_TASK_ID-?}" >&2',
            f"           return {EXIT_SCRIPT_ERROR} ;;",
            "    esac",
        ]
    run = ["    env -i", '"${venvoy_penv[@]}"', quote_all(head)]
    if fwd.args:
        run.append('"${venvoy_args[@]}"')
    if tail:
        run.append(quote_all(tail))
    if job.array_args is not None:
        run.append('"${venvoy_extra[@]}"')
    lines += [" ".join(run), "}", ""]
    if job.launcher == "srun":
        lines += ["# one task per Slurm task, on every node of the job",
                  "export -f venvoy_task",
                  f"exec srun {quote_all(job.srun_args)} /bin/bash -c venvoy_task".replace(
                      "srun  ", "srun ")]
    else:
        lines.append("venvoy_task")
    return "\n".join(lines) + "\n"


__all__ = ["EXIT_SCRIPT_ERROR", "RUNTIME_BASICS", "JobScript", "comment", "render"]
