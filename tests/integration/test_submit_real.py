"""`venvoy submit`, `jobs`, `logs`, `cancel`, `wait` on the real 3-node Slurm cluster, as
the unprivileged test user on its login node, with Apptainer (one job with Charliecloud).

One environment is built once (outside the cluster's namespaces, which have no network),
in a store on the cluster's shared storage. Its SIF is made exactly once, by the first
`venvoy submit`, before anything is submitted; the conversions log proves that no task
made another. Jobs are polled with a deadline, never waited for with sleeps.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from .cluster import Cluster, MpiEnv, cluster, mpi_env, shared_venvoy  # noqa: F401  (fixtures)
from .conftest import TEST_USER, USER_PYTHON
from .test_mpi_real import HELLO, check_ranks

pytestmark = pytest.mark.integration

ROOTFS = Path(os.environ.get("VENVOY_IT_ROOTFS", "/var/cache/venvoy-it/base-rootfs.tar"))
ENV = "it-submit"
#: Prints what a task sees: its array index, its argv, its node, its variables' names.
SHOW = ("import json, os, sys; print(json.dumps({'task': os.environ.get('SLURM_ARRAY_TASK_ID'), "
        "'argv': sys.argv[1:], 'node': os.uname().nodename, 'env': sorted(os.environ)}))")


@dataclass
class Site:
    """The test user's venvoy on the cluster: package, store and a work directory, all shared."""

    cluster: Cluster
    src: Path
    store: Path
    work: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {"PYTHONPATH": str(self.src), "VENVOY_HOME": str(self.store),
                "VENVOY_RUNTIME": "apptainer", **extra}

    def venvoy(self, *args: str, env: dict[str, str] | None = None, timeout: float = 600,
               cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return self.cluster.run([USER_PYTHON, "-m", "venvoy", *args], env=env or self.env(),
                                cwd=cwd or self.work, timeout=timeout)

    def ok(self, *args: str, timeout: float = 600) -> str:
        proc = self.venvoy(*args, timeout=timeout)
        assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-3000:])
        return proc.stdout

    def conversions(self) -> list[str]:
        log = self.store / "cache" / "conversions.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [line for line in lines if " apptainer " in line]

    def user_jobs(self) -> set[str]:
        proc = self.cluster.run(["squeue", "-h", "-u", TEST_USER, "-o", "%i"])
        return set(proc.stdout.split())

    def records(self) -> set[str]:
        d = self.store / "jobs"
        return {p.name for p in d.iterdir()} if d.is_dir() else set()


@pytest.fixture(scope="module")
def site(cluster: Cluster) -> Site:  # noqa: F811
    if not ROOTFS.is_file():
        pytest.fail(f"{ROOTFS} missing: run scripts/provision.sh", pytrace=False)
    _venvoy, venvoy_env = shared_venvoy(cluster)  # this checkout, on shared storage, once
    src = Path(venvoy_env["PYTHONPATH"])
    store = cluster.workdir("store-")
    work = cluster.workdir("work-")
    (work / "req.txt").write_text("six\n")
    (work / "req.txt").chmod(0o644)
    s = Site(cluster, src, store, work)
    # Built on the host as the test user (the cluster's namespaces have no network).
    proc = subprocess.run(
        ["runuser", "-u", TEST_USER, "--", "env", "-i", f"HOME={store}", f"USER={TEST_USER}",
         "PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", f"PYTHONPATH={src}",
         f"VENVOY_HOME={store}", "VENVOY_OFFLINE=1", USER_PYTHON, "-m", "venvoy", "init", ENV,
         "-r", "req.txt", "--base", str(ROOTFS), "--runtime", "charliecloud", "--quiet"],
        cwd=work, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return s


def one_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single `venvoy: error:` line of a refused command (and no traceback)."""
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("venvoy: error: "), proc.stderr
    return lines[0]


def outputs(work: Path, job_id: str, tasks: Iterable[int]) -> list[dict[str, object]]:
    """Each task's JSON line (the task's output file may start with Apptainer's INFO lines)."""
    out = []
    for i in tasks:
        text = (work / f"slurm-{job_id}_{i}.out").read_text()
        line = [x for x in text.splitlines() if x.startswith("{")]
        assert len(line) == 1, text
        out.append(json.loads(line[0]))
    return out


# -- one task ---------------------------------------------------------------------------------

def test_one_task_wait_passes_exit_codes_and_prepares_once(site: Site) -> None:
    before = len(site.conversions())
    proc = site.venvoy("submit", ENV, "--wait", "--", "python3", "-c",
                       "import sys; print('hello from', sys.prefix); sys.exit(3)", timeout=900)
    assert proc.returncode == 3, proc.stderr[-3000:]
    job_id = proc.stdout.split()[0]
    assert "hello from /" in (site.work / f"slurm-{job_id}.out").read_text()
    made = site.conversions()[before:]
    assert len(made) == 1, made  # made on the login node, before sbatch
    script = json.loads((site.store / "jobs" / f"{job_id}.json").read_text())["script"]
    assert "apptainer exec" in script and "venvoy run" not in script
    assert "image digest:" in script and "lock hash:" in script
    proc = site.venvoy("submit", ENV, "--wait", "--", "python3", "-c", "print('ok')")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(site.conversions()) == before + 1  # nothing made again
    # sacct alone tells what ran: a readable name (the comment too where the site stores it)
    # (slurmdbd records a job a moment after it ends: poll; IDs reused: the latest)
    site.cluster.wait_job(job_id)
    got = site.cluster.run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "Submit,JobName"])
    assert max(got.stdout.split()).split("|")[1] == f"venvoy-{ENV}", got.stdout


# -- arrays ------------------------------------------------------------------------------------

def test_hundred_task_arrays_spread_over_the_nodes(site: Site) -> None:
    before = len(site.conversions())
    lines = [f"{i} 'word with space' \"$HOME\"" for i in range(100)]
    (site.work / "tasks.txt").write_text("\n".join(lines) + "\n")
    (site.work / "tasks.txt").chmod(0o644)
    a = site.ok("submit", ENV, "--array-file", "tasks.txt", "--quiet", "--",
                "python3", "-c", SHOW).split()[0]
    # (a sparser --array: 12 more tasks keep the test within its time budget)
    b = site.ok("submit", ENV, "--array", "0-99:9", "--quiet", "--",
                "python3", "-c", SHOW, "fixed").split()[0]
    for job_id in (a, b):
        assert site.venvoy("wait", job_id, timeout=600).returncode == 0
    nodes: set[str] = set()
    for i, task in enumerate(outputs(site.work, a, range(100))):
        assert task["task"] == str(i)
        assert task["argv"] == [str(i), "word with space", "$HOME"]
        nodes.add(str(task["node"]))
    for i, task in zip(range(0, 100, 9), outputs(site.work, b, range(0, 100, 9)), strict=True):
        assert task["task"] == str(i) and task["argv"] == ["fixed"]
        env = task["env"]
        assert isinstance(env, list)
        assert "SLURM_ARRAY_TASK_ID" in env and "PYTHONNOUSERSITE" in env
        assert not {"PYTHONPATH", "VENVOY_HOME"} & set(env)  # the login shell's stay out
        nodes.add(str(task["node"]))
    assert nodes <= set(site.cluster.nodes) and len(nodes) >= 2, nodes
    assert len(site.conversions()) == before  # none on the nodes
    listed = json.loads(site.ok("jobs", "--json"))
    assert listed["accounting"] is True
    row = next(j for j in listed["jobs"] if j["id"] == a)
    assert row["state"] == "COMPLETED" and len(row["tasks"]) == 100
    assert {t["exit_code"] for t in row["tasks"]} == {0}


def test_plain_venvoy_run_in_an_array_sees_its_task_id(site: Site) -> None:
    """`sbatch --array --wrap 'venvoy run ENV -- ...'`: the task's Slurm variables reach it."""
    wrap = (f"{USER_PYTHON} -m venvoy run {ENV} -- python3 -c "
            "'import os; print(\"task\", os.environ[\"SLURM_ARRAY_TASK_ID\"])'")
    job_id = site.cluster.sbatch(["--array=0-5", "--output=plain-%A_%a.out", "--wrap", wrap],
                                 cwd=site.work, env=site.env())

    def all_printed() -> bool:
        files = [site.work / f"plain-{job_id}_{i}.out" for i in range(6)]
        return all(f.exists() and f"task {i}\n" in f.read_text() for i, f in enumerate(files))

    site.cluster.poll(all_printed, 300, "every task of the plain array to print its ID")


# -- MPI-style multi-node job --------------------------------------------------------------------

def test_three_node_job_starts_one_task_per_node_with_pmix(site: Site) -> None:
    code = ("import os; print('rank', os.environ.get('SLURM_PROCID'), os.uname().nodename, "
            "'PMIX_RANK' in os.environ, os.environ.get('OMPI_MCA_btl_vader_single_copy_mechanism'))")
    proc = site.venvoy("submit", ENV, "--nodes", "3", "--ntasks", "3", "--mpi", "pmix", "--wait",
                       "--", "python3", "-c", code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job_id = proc.stdout.split()[0]
    text = (site.work / f"slurm-{job_id}.out").read_text()
    ranks = sorted(re.findall(r"^rank (\d) (\S+) True none$", text, re.M))
    assert [r for r, _ in ranks] == ["0", "1", "2"], text
    assert {n for _, n in ranks} == set(site.cluster.nodes), text


def test_mpi_program_across_three_nodes(cluster: Cluster, mpi_env: MpiEnv) -> None:  # noqa: F811
    """mpi4py + Open MPI from the lock, 6 ranks on 3 nodes, submitted with venvoy (the
    environment of tests/integration/test_mpi_real.py, built once per session)."""
    d = cluster.workdir("mpi-submit-")
    (d / "hello_mpi.py").write_text(HELLO)
    (d / "hello_mpi.py").chmod(0o644)
    proc = cluster.run([*mpi_env.venvoy, "submit", mpi_env.name, "--runtime", "apptainer",
                        "--nodes", "3", "--ntasks", "6", "--mpi", mpi_env.srun_mpi, "--wait",
                        "--", "python", "hello_mpi.py"],
                       env=mpi_env.venvoy_env, cwd=d, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (d / f"slurm-{proc.stdout.split()[0]}.out").read_text()
    assert check_ranks(text) == {"n1": 2, "n2": 2, "n3": 2}, text
    assert "Sorry!" not in text  # PMIX_MCA_psec=native: no help-text noise


# -- watching and controlling --------------------------------------------------------------------

def test_jobs_logs_cancel_wait_on_running_and_finished(site: Site) -> None:
    # (a time limit: a failing test cannot leave it holding a node)
    job_id = site.ok("submit", ENV, "--quiet", "--time", "3", "--", "python3", "-u", "-c",
                     "import time; print('started', flush=True); time.sleep(600)").split()[0]
    try:
        check_running_then_cancel(site, job_id)
    finally:
        site.cluster.run(["scancel", job_id])
    # a finished job: wait returns its status at once, logs prints its output
    done = site.venvoy("submit", ENV, "--wait", "--", "python3", "-c", "print('fin'); exit(4)")
    assert done.returncode == 4
    done_id = done.stdout.split()[0]
    assert site.venvoy("wait", done_id).returncode == 4
    assert "fin" in site.ok("logs", done_id)
    assert "fin" in site.ok("logs", done_id, "--follow")  # a finished job: prints, then ends


def check_running_then_cancel(site: Site, job_id: str) -> None:
    def started() -> bool:
        proc = site.venvoy("logs", job_id)
        return proc.returncode == 0 and "started" in proc.stdout

    site.cluster.poll(started, 120, "the job's first line")
    # squeue alone tells what runs: the job's name and a comment naming the environment
    queued = site.cluster.run(["squeue", "-h", "-j", job_id, "-o", "%j|%k"]).stdout.strip()
    assert queued.startswith(f"venvoy-{ENV}|venvoy environment {ENV} identity "), queued
    listed = json.loads(site.ok("jobs", "--json"))
    assert next(j for j in listed["jobs"] if j["id"] == job_id)["state"] == "RUNNING"
    site.ok("cancel", job_id)
    assert site.venvoy("wait", job_id).returncode != 0
    listed = json.loads(site.ok("jobs", "--json"))
    assert next(j for j in listed["jobs"] if j["id"] == job_id)["state"] == "CANCELLED"
    text = site.ok("jobs")
    assert re.search(rf"^{job_id}\s+{ENV}\s+CANCELLED", text, re.M), text


def test_python_api(site: Site) -> None:
    """venvoy.slurm.submit and VenvoyEnvironment.submit: the same path as the CLI."""
    code = (f"import venvoy.slurm as s; from venvoy import VenvoyEnvironment as V\n"
            f"j = s.submit({ENV!r}, 'python3 -c \"print(7); exit(2)\"')\n"
            "print(j.id, j.wait(), j.exit_codes(), j.state(), repr(j.logs()))\n"
            f"k = V({ENV!r}, runtime='apptainer').submit(['python3', '-c', 'print(8)'], "
            "array='0-1')\n"
            "print(k.wait(), sorted(k.exit_codes().items()), repr(k.logs(1)))\n")
    proc = site.cluster.run([USER_PYTHON, "-c", code], env=site.env(), cwd=site.work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = proc.stdout.splitlines()
    assert re.fullmatch(r"\d+ 2 \{'': 2\} FAILED '.*7\\n'", first), first
    assert re.fullmatch(r"0 \[\('0', 0\), \('1', 0\)\] '.*8\\n'", second), second


def test_removed_image_fails_with_one_line(site: Site) -> None:
    sif = next((site.store / "cache" / "sif").glob("*.sif"))
    copy = site.work / "copy.sif"
    shutil.copyfile(sif, copy)
    copy.chmod(0o644)
    job_id = site.ok("submit", "--image", str(copy), "--sbatch-arg=--hold", "--quiet", "--",
                     "python3", "-c", "print('should not run')").split()[0]
    copy.unlink()
    site.cluster.run(["scontrol", "release", job_id], check=True)
    assert site.venvoy("wait", job_id).returncode == 125
    text = (site.work / f"slurm-{job_id}.out").read_text()
    assert text.count("\n") == 1 and text.startswith(
        f"venvoy: error: the image of environment copy.sif was removed after submission: {copy}")


def test_charliecloud_job(site: Site) -> None:
    proc = site.venvoy("submit", ENV, "--runtime", "charliecloud", "--wait", "--", "python3",
                       "-c", "import os, sys; print(sys.argv[1:], os.environ['SLURM_JOB_ID'])",
                       "a b", "$HOME", env=site.env(VENVOY_RUNTIME="charliecloud"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    job_id = proc.stdout.split()[0]
    assert f"['a b', '$HOME'] {job_id}" in (site.work / f"slurm-{job_id}.out").read_text()


# -- scripts and bad input -------------------------------------------------------------------------

HOSTILE: Sequence[str] = ("a b", "it's", 'say "hi"', "$HOME", "`id`", "$(id)", "l1\nl2", "\\", "")


def test_dry_run_is_valid_bash_and_quotes_exactly(site: Site) -> None:
    before = site.records()
    proc = site.venvoy("submit", ENV, "--dry-run", "--job-name", "j $x 'y'", "-e", "V=$(id) `x`",
                       "--", "python3", "-c", "import sys; print(sys.argv[1:])", *HOSTILE)
    assert proc.returncode == 0, proc.stderr
    path = site.work / "dry.sh"
    path.write_text(proc.stdout)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    # the frozen command line and variables, read back by bash, are exactly what was given
    found = re.search(r"^    env -i (.*?)\n}\n", proc.stdout, re.S | re.M)
    assert found, proc.stdout
    run_line = found.group(1)
    frozen = next(x for x in proc.stdout.splitlines() if x.startswith("    venvoy_penv+=(A"))
    words = read_back(run_line.replace('"${venvoy_penv[@]}"', "", 1))
    assert words[-len(HOSTILE) - 3:] == ["python3", "-c", "import sys; print(sys.argv[1:])",
                                         *HOSTILE]
    assert "APPTAINERENV_V=\\$(id) \\`x\\`" in read_back(frozen.replace("venvoy_penv+=(", "", 1)
                                                            .rstrip(")"))
    assert site.records() == before  # nothing submitted


def read_back(words: str) -> list[str]:
    """The words bash reads from a line of the script (evaluated only to print them)."""
    proc = subprocess.run(["bash", "-c", 'eval "printf \'%s\\0\' $1"', "x", words],
                          capture_output=True, text=True, check=True)
    return proc.stdout.split("\0")[:-1]


def test_bad_input_is_one_line_and_submits_nothing(site: Site) -> None:
    before_jobs, before_records = site.user_jobs(), site.records()
    cases = [
        ("submit", "no-such-env", "--", "true"),
        ("submit", ENV, "--array", "0-x", "--", "true"),
        ("submit", ENV, "--array", "0-5000", "--", "true"),
        ("submit", ENV, "--partition", "no-such-partition", "--", "true"),
    ]
    messages = [one_error(site.venvoy(*args)) for args in cases]
    assert "no-such-env" in messages[0]
    assert "bad --array" in messages[1]
    assert "MaxArraySize" in messages[2]
    assert "Slurm refused the job" in messages[3]
    big = site.work / "big.txt"
    big.write_text("x\n" * 1002)
    big.chmod(0o644)
    assert "MaxArraySize" in one_error(site.venvoy("submit", ENV, "--array-file", str(big),
                                                   "--", "true"))
    no_slurm = site.env(PATH="/nonexistent")
    assert "sbatch not found on PATH" in one_error(site.venvoy("submit", ENV, "--", "true",
                                                               env=no_slurm))
    assert site.user_jobs() == before_jobs and site.records() == before_records
