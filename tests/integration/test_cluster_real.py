"""The 3-node test cluster itself, on the real daemons, as the test user.

These prove the infrastructure the Slurm tests stand on: three idle nodes,
steps across all of them, array jobs spread over the nodes, node-local /tmp,
and accounting (slurmdbd on MariaDB) that records every job with its exit code.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from .cluster import Cluster


def test_three_idle_nodes(cluster: Cluster) -> None:
    cluster.wait_idle()
    proc = cluster.run(["sinfo", "-h", "-N", "-o", "%N %T %P"], check=True)
    rows = sorted(line.split() for line in proc.stdout.splitlines())
    assert rows == [[n, "idle", f"{cluster.partition}*"] for n in cluster.nodes]
    assert sorted(cluster.nodes) == ["n1", "n2", "n3"]


def test_clients_run_as_the_test_user_on_the_login_node(cluster: Cluster) -> None:
    proc = cluster.run(["sh", "-c", 'id -un; hostname; echo "$SLURM_CONF"; pwd'], check=True)
    assert proc.stdout.split() == [cluster.user, cluster.login_node, str(cluster.slurm_conf),
                                   str(cluster.root)]


def test_srun_reaches_every_node(cluster: Cluster) -> None:
    proc = cluster.run(["srun", "-N3", "hostname"], check=True)
    assert sorted(proc.stdout.split()) == ["n1", "n2", "n3"]


def test_nodes_have_private_tmp_and_a_shared_workdir(cluster: Cluster) -> None:
    d = cluster.workdir("tmp-")
    marker = f"/tmp/venvoy-it-{uuid.uuid4().hex}"
    cluster.run(["srun", "-N1", "-w", "n1", "sh", "-c", f"echo n1 > {marker}; hostname > seen"],
                cwd=d, check=True)
    assert (d / "seen").read_text().strip() == "n1"  # the working directory is shared
    proc = cluster.run(["srun", "-N2", "-w", "n1,n2", "-l", "sh", "-c",
                        f"if test -e {marker}; then echo yes; else echo no; fi"], cwd=d, check=True)
    seen = dict(line.split(": ", 1) for line in proc.stdout.splitlines())
    assert sorted(seen.values()) == ["no", "yes"]  # only n1 has the file in its /tmp
    assert not Path(marker).exists()  # nor does the machine's own /tmp
    cluster.run(["srun", "-N1", "-w", "n1", "rm", "-f", marker], cwd=d, check=True)


def test_array_job_is_spread_over_the_nodes(cluster: Cluster) -> None:
    d = cluster.workdir("array-")
    # Each task takes a whole node (2 CPUs) and waits until all three have
    # started, so the three must run at once, one on each node.
    script = d / "task.sh"
    script.write_text(
        "#!/bin/sh\n"
        'hostname > "host.$SLURM_ARRAY_TASK_ID"\n'
        "i=0\n"
        'while [ "$(ls host.* | wc -l)" -lt 3 ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n'
        '[ "$(ls host.* | wc -l)" -ge 3 ]\n'
    )
    script.chmod(0o755)
    job = cluster.sbatch(["--array=0-2", "-c", "2", "-o", "out.%a", str(script)], cwd=d)
    ends = [cluster.wait_job(f"{job}_{i}") for i in range(3)]
    assert [e.state for e in ends] == ["COMPLETED"] * 3, ends
    hosts = sorted((d / f"host.{i}").read_text().strip() for i in range(3))
    assert hosts == ["n1", "n2", "n3"]


def test_max_array_size_is_enforced(cluster: Cluster) -> None:
    # MaxArraySize=1001: index 1000 is the largest allowed.
    too_big = cluster.run(["sbatch", "--array=1001", "--wrap", "true"])
    assert too_big.returncode != 0
    assert "array" in too_big.stderr.lower()
    job = cluster.sbatch(["--hold", "--array=1000", "--wrap", "true"])
    cluster.run(["scancel", job], check=True)


def test_accounting_records_exit_codes(cluster: Cluster) -> None:
    d = cluster.workdir("acct-")
    ok = cluster.sbatch(["-N1", "--wrap", "hostname"], cwd=d)
    bad = cluster.sbatch(["-N1", "--wrap", "exit 3"], cwd=d)
    end_ok = cluster.wait_job(ok)
    end_bad = cluster.wait_job(bad)
    assert (end_ok.state, end_ok.exit_code) == ("COMPLETED", 0)
    assert (end_bad.state, end_bad.exit_code, end_bad.signal) == ("FAILED", 3, 0)
    assert end_ok.nodes in cluster.nodes
    # sacct as on a real cluster: user, account and cluster of the record
    proc = cluster.run(["sacct", "-n", "-P", "-X", "-j", bad, "-o", "User,Account,Cluster"],
                       check=True)
    assert proc.stdout.split() == [f"{cluster.user}|{cluster.account}|{cluster.name}"]
    out = (d / f"slurm-{ok}.out").read_text().strip()
    assert out == end_ok.nodes
