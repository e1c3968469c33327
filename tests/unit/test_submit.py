"""`venvoy submit`'s pure parts: the job script (valid bash, hostile values exact, the
allow-list), Slurm's output parsed, arrays, patterns, and bad input refused early."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from venvoy.cluster import jobs, slurm
from venvoy.cluster.script import JobScript, comment, render
from venvoy.cluster.submit import SubmitOptions, plan, read_array_file
from venvoy.core.errors import BadRequest, NotFound, VenvoyError
from venvoy.runtime.base import EnvForward
from venvoy.runtime.request import job_env, job_env_allowed, make_request
from venvoy.store.layout import Store

BASH = shutil.which("bash") or "/bin/bash"
HOSTILE = ["a b", "it's", 'say "hi"', "$HOME", "`id`", "$(id)", "line1\nline2", "back\\slash",
           "*", "-n", "", "tab\there", "#not a comment", ";rm -rf /", "ünï", "%j", "a=b"]

#: A stand-in runtime: prints its argv and the environment it was given, as JSON.
SHOW = ("import json, os, sys; json.dump({'argv': sys.argv[1:], 'env': dict(os.environ)}, "
        "sys.stdout)")


def fake_job(**kw: object) -> JobScript:
    fields: dict[str, object] = {
        "environment": "e1", "argv": [sys.executable, "-c", SHOW, "IMAGE", "cmd"],
        "forward": EnvForward(prefix="PFX_", escape="\\$`"), "image": "/nonexistent.sif",
        "check_image": False, "runtime": "fake", "venvoy_version": "0"}
    fields.update(kw)
    return JobScript(**fields)  # type: ignore[arg-type]


def run_script(text: str, tmp_path: Path, env: dict[str, str]) -> dict[str, object]:
    import json

    path = tmp_path / "job.sh"
    path.write_text(text)
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/home/x"}
    proc = subprocess.run([BASH, str(path)], env=base | env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, object] = json.loads(proc.stdout)
    return out


def bash_n(text: str, tmp_path: Path) -> None:
    path = tmp_path / "check.sh"
    path.write_text(text)
    proc = subprocess.run([BASH, "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# -- the script ----------------------------------------------------------------------------------

def test_script_is_valid_bash_and_argv_round_trips(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", SHOW, "IMAGE", *HOSTILE]
    text = render(fake_job(argv=argv, command=HOSTILE, sbatch_argv=["sbatch", *HOSTILE],
                           environment="e\nrm -rf /", image="/x\n$(id)"))
    bash_n(text, tmp_path)
    got = run_script(text, tmp_path, {})
    assert got["argv"] == ["IMAGE", *HOSTILE]
    # every header line stays a comment: a newline in a value cannot become code
    header = text.split("set -u")[0]
    assert all(line.startswith("#") or not line for line in header.splitlines())


def test_clean_environment_plus_the_allow_list(tmp_path: Path) -> None:
    text = render(fake_job(frozen_env=[("PFX_PYTHONNOUSERSITE", "1"), ("PFX_MINE", "x y")],
                           fixed_names=["PYTHONNOUSERSITE", "MINE", "SLURM_FIXED"],
                           extra_names=["OMP_NUM_THREADS"]))
    env = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_PROCID": "2", "PMIX_RANK": "2",
           "CUDA_VISIBLE_DEVICES": "1", "TMPDIR": "/tmp/job", "OMPI_MCA_x": "y",
           "OMP_NUM_THREADS": "4", "SLURM_FIXED": "host", "PYTHONPATH": "/bad",
           "VIRTUAL_ENV": "/bad", "CONDA_PREFIX": "/bad", "SECRET": "no",
           "SLURM_ODD": "a$b`c\\d\"e f\ng"}
    got = run_script(text, tmp_path, env)
    inside = got["env"]
    assert isinstance(inside, dict)
    assert inside["PFX_SLURM_ARRAY_TASK_ID"] == "7"
    assert inside["PFX_SLURM_PROCID"] == "2" and inside["PFX_PMIX_RANK"] == "2"
    assert inside["PFX_CUDA_VISIBLE_DEVICES"] == "1" and inside["PFX_TMPDIR"] == "/tmp/job"
    assert inside["PFX_OMPI_MCA_x"] == "y" and inside["PFX_OMP_NUM_THREADS"] == "4"
    # escaped for a runtime that evaluates its prefixed variables (Apptainer)
    assert inside["PFX_SLURM_ODD"] == "a\\$b\\`c\\\\d\"e f\ng"
    assert "PFX_SLURM_FIXED" not in inside  # --env wins over the task's own
    assert inside["PFX_MINE"] == "x y" and inside["PFX_PYTHONNOUSERSITE"] == "1"
    for bad in ("PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX", "SECRET"):
        assert not any(k.endswith(bad) for k in inside), bad
    assert set(inside) - {k for k in inside if k.startswith("PFX_")} <= {
        "PATH", "HOME", "USER", "LOGNAME", "LANG", "XDG_RUNTIME_DIR", "LC_CTYPE", "PWD", "SHLVL",
        "_"} | set(), inside


def test_arguments_per_variable_go_before_image_and_command(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", SHOW, "--unset-env=*", "IMAGE", "--", "cmd", "x"]
    fwd = EnvForward(args=("--set-env={name}={value}",), before=4)
    text = render(fake_job(argv=argv, forward=fwd))
    got = run_script(text, tmp_path, {"SLURM_JOB_ID": "5", "SLURM_NAME": "a b=$c"})
    args = got["argv"]
    assert isinstance(args, list)
    assert args[-4:] == ["IMAGE", "--", "cmd", "x"]
    assert "--set-env=SLURM_JOB_ID=5" in args and "--set-env=SLURM_NAME=a b=$c" in args
    assert args.index("--set-env=SLURM_JOB_ID=5") > args.index("--unset-env=*")
    env = got["env"]
    assert isinstance(env, dict) and env["SLURM_JOB_ID"] == "5"  # the runtime's own, too


def test_array_file_words_per_task(tmp_path: Path) -> None:
    lines = ["a 'b c'", "\"$HOME\" x\\ y", "'line\nbreak'"]
    f = tmp_path / "tasks.txt"
    f.write_text("a 'b c'\n\"$HOME\" x\\ y\n--flag '#1'\n")
    tasks = read_array_file(str(f))
    assert tasks == [["a", "b c"], ["$HOME", "x y"], ["--flag", "#1"]]
    text = render(fake_job(array_args=dict(enumerate(tasks))))
    bash_n(text, tmp_path)
    for i, words in enumerate(tasks):
        got = run_script(text, tmp_path, {"SLURM_ARRAY_TASK_ID": str(i)})
        assert got["argv"] == ["IMAGE", "cmd", *words]
    path = tmp_path / "job.sh"
    proc = subprocess.run([BASH, str(path)], env={"PATH": "/usr/bin:/bin",
                                                    "SLURM_ARRAY_TASK_ID": "9"},
                          capture_output=True, text=True)
    assert proc.returncode == 125 and "array task 9 has no line" in proc.stderr
    assert lines  # (quoted as a shell would, never evaluated)


def test_removed_image_is_one_line(tmp_path: Path) -> None:
    text = render(fake_job(check_image=True, image=str(tmp_path / "gone.sif")))
    path = tmp_path / "job.sh"
    path.write_text(text)
    proc = subprocess.run([BASH, str(path)], env={"PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True)
    assert proc.returncode == 125
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("venvoy: error: the image of environment e1 was removed")


def test_srun_launcher_exports_the_task(tmp_path: Path) -> None:
    text = render(fake_job(launcher="srun", srun_args=["--mpi=pmix"]))
    bash_n(text, tmp_path)
    assert "export -f venvoy_task" in text
    assert "exec srun --mpi=pmix /bin/bash -c venvoy_task" in text
    fake = tmp_path / "bin"
    fake.mkdir()
    srun = fake / "srun"
    srun.write_text("#!/bin/bash\nshift\nexec \"$@\"\n")  # drop --mpi=..., run the task
    srun.chmod(srun.stat().st_mode | stat.S_IXUSR)
    got = run_script(text, tmp_path, {"PATH": f"{fake}:{os.environ.get('PATH', '')}",
                                      "SLURM_PROCID": "1"})
    assert got["argv"] == ["IMAGE", "cmd"]


def test_prologue_lines_run_first(tmp_path: Path) -> None:
    text = render(fake_job(prologue=["export SLURM_FROM_PROLOGUE=yes"]))
    got = run_script(text, tmp_path, {})
    env = got["env"]
    assert isinstance(env, dict) and env["PFX_SLURM_FROM_PROLOGUE"] == "yes"


def test_comment_escapes_control_characters() -> None:
    assert comment("a\nb\x1b[31m") == "a\\nb\\x1b[31m"


# -- venvoy run inside a job ------------------------------------------------------------------

def test_run_inside_a_job_forwards_the_task_variables(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    host = {"SLURM_JOB_ID": "9", "SLURM_ARRAY_TASK_ID": "3", "PMIX_RANK": "0",
            "PYTHONPATH": "/bad", "VIRTUAL_ENV": "/v", "CONDA_PREFIX": "/c", "HOME": "/h"}
    req = make_request("img", ["python"], environ=host, tty=False)
    env = req.env_dict
    assert env["SLURM_ARRAY_TASK_ID"] == "3" and env["PMIX_RANK"] == "0"
    assert not {"PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX", "HOME"} & set(env)
    req = make_request("img", ["python"], environ=host, env=["SLURM_ARRAY_TASK_ID=x"], tty=False)
    assert req.env_dict["SLURM_ARRAY_TASK_ID"] == "x"  # --env wins
    outside = make_request("img", ["python"], environ={"SLURM_ARRAY_TASK_ID": "3"}, tty=False)
    assert "SLURM_ARRAY_TASK_ID" not in outside.env_dict  # not in a job: nothing
    assert job_env({}) == []
    assert job_env_allowed("SLURM_X") and job_env_allowed("TMPDIR")
    assert not job_env_allowed("PYTHONPATH") and not job_env_allowed("SLURM-X")


# -- Slurm's output ---------------------------------------------------------------------------

def test_parse_array() -> None:
    assert (slurm.parse_array("0-3").count, slurm.parse_array("0-3").last) == (4, 3)
    spec = slurm.parse_array("1,3,5-9:2%2")
    assert (spec.count, spec.last, spec.throttle) == (5, 9, 2)
    assert slurm.parse_array("0-5,3-7").count == 8
    assert slurm.parse_array("%4").count == 0 and slurm.parse_array("%4").throttle == 4
    for bad in ("", "a", "3-1", "0-5%0", "1,,2", "0-99999999", "-1", "0-3 ", "0-3\n"):
        with pytest.raises(BadRequest):
            slurm.parse_array(bad)


def test_parse_sacct_and_scontrol() -> None:
    t = "|2026-12-03T02:00:00"
    text = (f"12_0|COMPLETED|0:0|00:00:01|n1{t}\n12_1|FAILED|3:0|00:00:02|n2{t}\n"
            f"12_[2-9%2]|PENDING|0:0|00:00:00|None assigned{t}\n"
            "13|COMPLETED|0:0|00:00:01|n1|2026-12-01T00:00:00\n"  # an old job of the same ID
            f"13|CANCELLED by 0|0:15|00:01:00|n3{t}\n"
            f"99|COMPLETED|0:0|00:00:01|n1{t}\ngarbage\n")
    tasks = slurm.parse_sacct(text, ["12", "13"])
    assert [(t.task, t.state, t.exit_code) for t in tasks] == [
        ("0", "COMPLETED", 0), ("1", "FAILED", 3), ("[2-9%2]", "PENDING", 0), ("", "CANCELLED", 0)]
    assert not slurm.all_done(tasks)
    assert tasks[1].status() == 3 and tasks[3].status() == 128 + 15
    assert slurm.worst_status(tasks[:2]) == 3
    sc = ("JobId=20 ArrayJobId=20 ArrayTaskId=0 JobName=x JobState=COMPLETED Reason=None "
          "ExitCode=0:0 RunTime=00:00:01 NodeList=vm\n"
          "JobId=21 ArrayJobId=20 ArrayTaskId=1 JobState=FAILED ExitCode=3:0 NodeList=vm\n"
          "JobId=22 JobState=RUNNING ExitCode=0:0 NodeList=(null)\n"
          "JobId=23 ArrayJobId=20 ArrayTaskId=2-5 JobState=PENDING ExitCode=0:0\n")
    tasks = slurm.parse_scontrol(sc, ["20"])
    assert [(t.task, t.state) for t in tasks] == [("0", "COMPLETED"), ("1", "FAILED"),
                                                  ("[2-5]", "PENDING")]
    assert slurm.parse_scontrol(sc, ["22"])[0].nodes == ""
    assert jobs.summarize(tasks) == "PENDING"
    assert jobs.summarize(tasks[:2]) == "FAILED"
    assert jobs.summarize([]) == "UNKNOWN"


def test_expand_pattern() -> None:
    assert jobs.expand_pattern("slurm-%A_%a.out", "7", 3, "n", "u") == "slurm-7_3.out"
    assert jobs.expand_pattern("o-%j-%x-%u-%%.txt", "7", None, "n", "u") == "o-7-n-u-%.txt"
    assert jobs.expand_pattern("%4a", "7", 3, "n", "u") == "0003"
    with pytest.raises(BadRequest):
        jobs.expand_pattern("%N.out", "7", None, "n", "u")
    with pytest.raises(BadRequest):
        jobs.expand_pattern("%j.out", "7", 2, "n", "u")


def test_records_round_trip_and_damage(tmp_path: Path) -> None:
    store = Store(tmp_path, environ={"PATH": ""})
    job = jobs.save({"id": "42", "script": "#!/bin/bash\n", "environment": "e1",
                     "output": "slurm-%j.out", "cwd": str(tmp_path)}, store)
    assert jobs.load("42", store).script == "#!/bin/bash\n"
    assert [j.id for j in jobs.list_jobs(store)] == ["42"]
    (tmp_path / "slurm-42.out").write_text("hello\n")
    assert job.logs() == "hello\n"
    with pytest.raises(BadRequest):
        job.logs(3)  # not an array
    with pytest.raises(NotFound):
        jobs.load("43", store)
    with pytest.raises(BadRequest):
        jobs.load("../x", store)
    (store.jobs / "44.json").write_text("{")
    with pytest.raises(VenvoyError, match="damaged"):
        jobs.load("44", store)


# -- bad input, refused before anything is made or submitted -----------------------------------

def test_bad_input_is_refused_early(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VENVOY_CONFIG", str(tmp_path / "none.toml"))
    store = Store(tmp_path / "store", environ={"PATH": str(tmp_path / "empty"),
                                               "VENVOY_CONFIG": str(tmp_path / "none.toml")})
    with pytest.raises(NotFound, match="sbatch not found on PATH"):
        plan("e1", ["true"], SubmitOptions(), store=store)
    with pytest.raises(BadRequest, match="bad --array"):
        plan("e1", ["true"], SubmitOptions(array="0-x"), store=store)
    with pytest.raises(BadRequest, match="no command"):
        plan("e1", [], SubmitOptions(), store=store)
    with pytest.raises(BadRequest, match="one of them"):
        plan(None, ["true"], SubmitOptions(), store=store)
    with pytest.raises(BadRequest, match="--time"):
        plan("e1", ["true"], SubmitOptions(time="1\n#SBATCH --x"), store=store)
    with pytest.raises(BadRequest, match="--mpi"):
        plan("e1", ["true"], SubmitOptions(mpi="openmpi"), store=store)
    with pytest.raises(BadRequest, match="sbatch-arg"):
        plan("e1", ["true"], SubmitOptions(sbatch_args=["--wrap=x"]), store=store)
    f = tmp_path / "tasks.txt"
    f.write_text("a\n\nb\n")
    with pytest.raises(BadRequest, match="line 2 is empty"):
        plan("e1", ["true"], SubmitOptions(array_file=str(f)), store=store)
    f.write_text("a 'unclosed\n")
    with pytest.raises(BadRequest, match="line 1"):
        plan("e1", ["true"], SubmitOptions(array_file=str(f)), store=store)
    f.write_text("a\n")
    with pytest.raises(BadRequest, match="only be %N"):
        plan("e1", ["true"], SubmitOptions(array_file=str(f), array="0-3"), store=store)
    with pytest.raises(BadRequest, match="unknown submit option"):
        SubmitOptions.from_kwargs({"tiem": "1"})


def test_cli_submit_needs_the_command_after_dashes(capsys: pytest.CaptureFixture[str]) -> None:
    from venvoy.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["submit", "e1", "python3"])
    assert exc.value.code == 2
    assert main(["submit", "e1"]) == 2
    for err in capsys.readouterr().err.splitlines():
        assert err.startswith("venvoy: error:")


def test_cli_dry_run_needs_no_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """--image with a SIF path and --dry-run: the script, with no sbatch on PATH."""
    if shutil.which("apptainer") is None:
        pytest.skip("apptainer is not installed here")
    apptainer_dir = os.path.dirname(os.path.realpath(shutil.which("apptainer") or ""))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.path.dirname(shutil.which('apptainer') or '')}"
                       f":{apptainer_dir}")
    monkeypatch.setenv("VENVOY_HOME", str(tmp_path / "store"))
    config = tmp_path / "config.toml"
    config.write_text('[slurm]\npartition = "site-part"\naccount = "proj"\n'
                      'prologue = ["module load apptainer # site"]\nmpi = "pmix"\n')
    monkeypatch.setenv("VENVOY_CONFIG", str(config))
    sif = tmp_path / "x y.sif"
    sif.write_bytes(b"")
    from venvoy.cli.main import main

    code = main(["submit", "--image", str(sif), "--runtime", "apptainer", "--dry-run",
                 "--array", "0-4%2", "--time", "00:01:00", "-e", "A=$x y", "--",
                 "python3", "-c", "print('hi')"])
    out = capsys.readouterr().out
    assert code == 0
    bash_n(out, tmp_path)
    assert shlex.quote(str(sif)) in out and "--array=0-4%2" in out
    assert "--partition=site-part" in out and "--account=proj" in out  # the site's defaults
    assert "\nmodule load apptainer # site\n" in out
    assert shlex.quote("APPTAINERENV_A=\\$x y") in out
    code = main(["submit", "--image", str(sif), "--runtime", "apptainer", "--dry-run",
                 "--partition", "mine", "--prologue", "true", "--ntasks", "4", "--", "x"])
    out = capsys.readouterr().out
    assert code == 0 and "--partition=mine" in out and "module load" not in out
    assert "exec srun --mpi=pmix /bin/bash -c venvoy_task" in out  # 4 tasks: srun
    config.write_text('[slurm]\nfavourite = "x"\n')
    assert main(["submit", "--image", str(sif), "--dry-run", "--", "x"]) == 125
    assert "unknown key slurm.favourite" in capsys.readouterr().err


def test_docker_is_refused_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Docker's daemon starts containers outside the job: refused, one line; allowed on request."""
    from venvoy.runtime import detect
    from venvoy.runtime.docker import Docker

    class Choice:
        runtime = Docker("/usr/bin/docker", {"PATH": "/usr/bin"})

    monkeypatch.setattr(detect, "choose_runtime", lambda *a, **k: Choice())
    monkeypatch.chdir(tmp_path)
    store = Store(tmp_path / "store", environ={"PATH": "/usr/bin:/bin",
                                               "VENVOY_CONFIG": str(tmp_path / "none.toml")})
    with pytest.raises(BadRequest, match="outside the job") as exc:
        plan(None, ["true"], SubmitOptions(image="img:1", dry_run=True), store=store)
    assert "--allow-docker" in str(exc.value)
    p = plan(None, ["true"], SubmitOptions(image="img:1", dry_run=True, allow_docker=True),
             store=store)
    assert "docker run" in p.script.replace("/usr/bin/docker", "docker")
    assert '"${venvoy_args[@]}"' in p.script  # -e NAME per allowed variable, before the image


def test_each_adapter_says_where_run_time_variables_go(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The forwarded arguments land just before the image (and ch-run's `--`)."""
    from venvoy.runtime import RUNTIMES, adapter_class
    from venvoy.runtime.request import RunRequest

    monkeypatch.chdir(tmp_path)
    req = RunRequest("img:1", ("python3", "-c", "x"), tty=False)
    said = {}
    for name in RUNTIMES:
        cls = adapter_class(name)
        rt = cls(f"/usr/bin/{cls.binary}", {"PATH": "/usr/bin", "USER": "u"})
        fwd = rt.env_forward(req)
        said[name] = fwd is not None
        if fwd is None or not fwd.args:
            continue
        argv = rt.run_argv(req)
        assert argv[len(argv) - fwd.before] == "img:1", (name, argv)
    assert said["apptainer"] and said["charliecloud"] and said["podman"] and said["docker"]
