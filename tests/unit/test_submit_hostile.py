"""`venvoy submit`, `logs`, `wait` against careless or hostile input: each is refused in
one line (nothing submitted, nothing hangs), or handled without a wrong answer."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from venvoy.cluster import jobs, slurm
from venvoy.cluster.submit import SubmitOptions, plan, read_array_file, reserved_sbatch_option
from venvoy.core.errors import BadRequest, RuntimeFailed, VenvoyError
from venvoy.store.layout import Store


def empty_store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store", environ={"PATH": str(tmp_path / "empty"),
                                              "VENVOY_CONFIG": str(tmp_path / "none.toml")})


@pytest.mark.parametrize("arg", [
    "--output=/etc/x", "-o/etc/x", "-Oo/etc/x", "--out=/etc/x", "--error=/tmp/e", "-e/tmp/e",
    "--job-name=x", "-Jx", "-vvJx", "--array=0-9", "-a1-3", "--chdir=/etc", "-D/etc",
    "--export=NONE", "--export", "--export-file=f", "--wrap=true", "--wra=true", "--parsable",
    "--wait", "-W", "--test-only", "--clusters=b", "-Mb"])
def test_sbatch_arg_cannot_override_what_venvoy_sets(tmp_path: Path, arg: str) -> None:
    """sbatch takes unambiguous prefixes and clustered short options: all are caught,
    before anything else (no sbatch needed to refuse)."""
    assert reserved_sbatch_option(arg) is not None
    with pytest.raises(BadRequest, match="which venvoy sets itself"):
        plan(None, ["true"], SubmitOptions(image="x.sif", sbatch_args=[arg]),
             store=empty_store(tmp_path))


@pytest.mark.parametrize("arg", ["--exclusive", "--nice=5", "--wait-all-nodes=1", "-s",
                                 "--comment=x", "--mail-type=END", "-p", "--requeue"])
def test_sbatch_arg_other_options_pass(arg: str) -> None:
    assert reserved_sbatch_option(arg) is None
    assert reserved_sbatch_option("--export=NONE") == "--export"  # exact before prefix


def test_array_file_fifo_device_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(BadRequest, match="not a regular file"):
        read_array_file(str(fifo))
    with pytest.raises(BadRequest, match="not a regular file"):
        read_array_file("/dev/zero")
    assert time.monotonic() - t0 < 5


def test_array_file_large_is_fast_and_counted_before_parsing(tmp_path: Path) -> None:
    """10 MB of lines: unquoted lines split without shlex (same words), and more lines
    than the cluster's MaxArraySize are refused before any is parsed."""
    f = tmp_path / "big"
    f.write_text("a  b\t*  $(id) `x` #c\n" * 500_000)
    t0 = time.monotonic()
    tasks = read_array_file(str(f))
    assert len(tasks) == 500_000 and tasks[0] == ["a", "b", "*", "$(id)", "`x`", "#c"]
    assert time.monotonic() - t0 < 20
    with pytest.raises(BadRequest, match="array too large: 500000 lines"):
        read_array_file(str(f), max_lines=1001)
    f.write_text("'a b' \"c\\\"d\" e\\ f\n")  # quoted: still shlex's words
    assert read_array_file(str(f)) == [["a b", 'c"d', "e f"]]


def write_record(store: Store, record: dict[str, object]) -> Path:
    store.jobs.mkdir(parents=True, exist_ok=True)
    path = store.jobs / f"{record['id']}.json"
    path.write_text(json.dumps(record))
    return path


def test_damaged_records_are_one_line(tmp_path: Path) -> None:
    """A record that is a link, a directory, a FIFO or has wrong field types: damaged."""
    store = Store(tmp_path, environ={"PATH": ""})
    store.jobs.mkdir(parents=True)
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"id": "5", "script": "x", "output": "o"}))
    (store.jobs / "5.json").symlink_to(target)
    (store.jobs / "6.json").mkdir()
    os.mkfifo(store.jobs / "7.json")
    write_record(store, {"id": "8", "script": "x", "output": ["a"], "cwd": 5})
    write_record(store, {"id": "9", "script": "x", "output": "o", "array_tasks": "x"})
    write_record(store, {"id": "10", "script": "x", "output": "o", "cwd": "rel"})
    for job_id in ("5", "6", "7", "8", "9", "10"):
        with pytest.raises(VenvoyError, match="damaged"):
            jobs.load(job_id, store)
    assert jobs.list_jobs(store) == []


def test_logs_reads_only_regular_files_of_the_user(tmp_path: Path) -> None:
    store = Store(tmp_path, environ={"PATH": ""})
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    write_record(store, {"id": "11", "script": "x", "output": str(fifo), "cwd": "/"})
    write_record(store, {"id": "12", "script": "x", "output": "/dev/zero", "cwd": "/"})
    for job_id in ("11", "12"):
        with pytest.raises(BadRequest, match="not a job output file of yours"):
            jobs.load(job_id, store).logs()
    other = [p for p in ("/etc/passwd", "/etc/hostname") if os.path.exists(p)
             and os.stat(p).st_uid != os.getuid()]
    if other:
        write_record(store, {"id": "13", "script": "x", "output": other[0], "cwd": "/"})
        with pytest.raises(BadRequest, match="not a job output file of yours"):
            jobs.load("13", store).logs()


def test_logs_task_out_of_range(tmp_path: Path) -> None:
    store = Store(tmp_path, environ={"PATH": ""})
    write_record(store, {"id": "14", "script": "x", "output": "o-%a", "cwd": str(tmp_path),
                         "array_tasks": 3})
    job = jobs.load("14", store)
    for task in (-1, slurm.MAX_ARRAY_INDEX + 1, 10**30):
        with pytest.raises(BadRequest, match="no array task"):
            job.logs(task)


def test_exit_codes_out_of_range_are_not_success() -> None:
    """ExitCode=256:0 must not wrap around to status 0 for a FAILED task."""
    assert slurm.parse_exit("256:0") == (None, None)
    assert slurm.parse_exit("1:200") == (None, None)
    assert slurm.parse_exit("255:0") == (255, 0)
    [t] = slurm.parse_scontrol("JobId=42 JobState=FAILED ExitCode=256:0\n", ["42"])
    assert slurm.worst_status([t]) == 1


def fake_sbatch(tmp_path: Path, out: str, code: int = 0) -> list[str]:
    tool = tmp_path / "sbatch"
    tool.write_text(f"#!/bin/sh\ncat >/dev/null\nprintf '%s' {json.dumps(out)}\nexit {code}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return [str(tool), "--parsable"]


def test_sbatch_output_surprises(tmp_path: Path) -> None:
    if shutil.which("sh") is None:
        pytest.skip("no sh")
    env = {"PATH": os.environ.get("PATH", "")}
    assert slurm.submit(fake_sbatch(tmp_path, "42;clusterb\n"), "", environ=env) == "42"
    # a wrapper that drops --parsable
    assert slurm.submit(fake_sbatch(tmp_path, "Submitted batch job 43\n"), "",
                        environ=env) == "43"
    with pytest.raises(RuntimeFailed, match="a job may have been submitted"):
        slurm.submit(fake_sbatch(tmp_path, ""), "", environ=env)
    with pytest.raises(RuntimeFailed, match="nothing was submitted"):
        slurm.submit(fake_sbatch(tmp_path, "", 1), "", environ=env)


def test_ctrl_c_while_waiting_says_the_job_goes_on(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from venvoy.cli.main import main

    monkeypatch.setenv("VENVOY_HOME", str(tmp_path / "home"))
    store = Store()
    write_record(store, {"id": "15", "script": "x", "output": "o", "cwd": str(tmp_path)})

    def interrupted(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(slurm, "poll", interrupted)
    assert main(["wait", "15"]) == 130
    err = capsys.readouterr().err
    assert "job 15 goes on" in err and "venvoy cancel 15" in err


def test_image_name_with_newline_is_escaped_in_job_name(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("apptainer") is None:
        pytest.skip("apptainer is not installed here")
    monkeypatch.chdir(tmp_path)
    sif = tmp_path / "x\ny.sif"
    sif.write_bytes(b"")
    store = Store(tmp_path / "store", environ={
        "PATH": os.path.dirname(shutil.which("apptainer") or "") + ":/usr/bin:/bin",
        "VENVOY_CONFIG": str(tmp_path / "none.toml")})
    p = plan(None, ["true"], SubmitOptions(image=str(sif), runtime="apptainer", dry_run=True),
             store=store)
    assert all("\n" not in a for a in p.sbatch_argv), p.sbatch_argv
    assert "--job-name=venvoy-x\\ny.sif" in p.sbatch_argv


@pytest.mark.parametrize("kw", [{"env": {"X": "a\0b"}}, {"env": ["X=a\0b"]},
                                {"mounts": ["/tmp:/a\0b"]}, {"workdir": "/a\0b"},
                                {"image": "a\0.sif"}, {"cmd": ["echo", "a\0b"]}])
def test_nul_never_reaches_the_script(tmp_path: Path, kw: dict[str, object]) -> None:
    """bash refuses a script with a NUL byte ("cannot execute binary file"): refused first."""
    cmd = kw.pop("cmd", ["echo"])
    opts = {"image": "x.sif", **kw}
    with pytest.raises(BadRequest, match="NUL"):
        plan(None, cmd, SubmitOptions(**opts), store=empty_store(tmp_path))  # type: ignore[arg-type]
    f = tmp_path / "tasks"
    f.write_bytes(b"a\0b\n")
    with pytest.raises(BadRequest, match="NUL"):
        read_array_file(str(f))


def test_logs_task_not_in_the_array(tmp_path: Path) -> None:
    store = Store(tmp_path, environ={"PATH": ""})
    write_record(store, {"id": "16", "script": "x", "output": "o-%a", "cwd": str(tmp_path),
                         "array_tasks": 3, "array": "1,5-9:4%2"})
    job = jobs.load("16", store)
    with pytest.raises(BadRequest, match=r"no array task 2 \(its tasks: 1,5-9:4\)"):
        job.logs(2)
    (tmp_path / "o-9").write_text("nine\n")
    assert job.logs(9) == "nine\n"
    assert 5 in slurm.parse_array("1,5-9:4%2") and 6 not in slurm.parse_array("1,5-9:4")


def test_python_api_values_as_python_gives_them(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """env= (documented) is an option, not the environment's name; one string for a list
    option is one item (never its characters); numbers are their text; a bad command
    or type is one BadRequest, not a TypeError."""
    import venvoy.slurm
    from venvoy.cluster import submit as submit_mod

    seen: list[tuple[object, list[str], SubmitOptions]] = []
    monkeypatch.setattr(submit_mod, "submit",
                        lambda name, argv, opts, **k: seen.append((name, argv, opts)))
    monkeypatch.setattr(venvoy.slurm, "_submit_options", submit_mod.submit)
    one_name = "OMP"
    venvoy.slurm.submit("e1", "python3 'a b'", env={"X": 1}, prologue="module load x",
                        sbatch_args="--exclusive", env_pass=one_name, nodes=2, mounts=tmp_path)
    name, argv, opts = seen[-1]
    assert name == "e1" and argv == ["python3", "a b"]
    assert opts.env == {"X": "1"} and opts.prologue == ["module load x"]
    assert opts.sbatch_args == ["--exclusive"] and opts.env_pass == ["OMP"]
    assert opts.nodes == "2" and opts.mounts == [str(tmp_path)]
    for cmd, kw in [(None, {}), ("a 'b", {}), ([1], {}), (["x"], {"time": True}),
                    (["x"], {"mounts": [5]}), (["x"], {"env": {"X": None}})]:
        with pytest.raises(BadRequest):
            venvoy.slurm.submit("e1", cmd, **kw)


def test_jobs_table_shows_no_exit_code_while_running(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """scontrol says ExitCode=0:0 for a running job: no "0" in EXIT CODES until it ends;
    a record without an environment still lists."""
    from venvoy.cli.main import main

    monkeypatch.setenv("VENVOY_HOME", str(tmp_path / "home"))
    write_record(Store(), {"id": "17", "script": "x", "output": "o", "cwd": str(tmp_path)})
    state = {"s": "RUNNING"}
    monkeypatch.setattr(slurm, "query", lambda ids, environ=None: slurm.parse_scontrol(
        f"JobId=17 JobState={state['s']} ExitCode=0:0 RunTime=00:00:05\n", ids))
    monkeypatch.setattr(slurm, "has_accounting", lambda environ=None: True)
    assert main(["jobs"]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[:2] == ["17", "RUNNING"] and row[3] == "-"
    state["s"] = "COMPLETED"
    assert main(["jobs"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[3] == "0"
