"""Multi-node MPI from a venvoy environment, on the 3-node test cluster.

The environment (mpi4py + PyPI's Open MPI wheel, built once per session by the
``mpi_env`` fixture) runs under ``srun --mpi=pmix`` across three nodes, six
ranks, as the test user: first as plain ``apptainer exec`` on its SIF (the
hybrid model a site documents), then through ``venvoy run NAME`` inside the
tasks (the PMIx variables of each task must reach the container).
"""

from __future__ import annotations

import re
from collections import Counter

from .cluster import Cluster, MpiEnv

HELLO = """\
import socket
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
total = comm.allreduce(rank)
# 4 MB from rank 0 to all: large enough for the rendezvous/single-copy paths,
# within a node (shared memory) and between nodes (TCP).
buf = bytearray(4 * 1024 * 1024)
if rank == 0:
    buf[-1] = 42
comm.Bcast([buf, MPI.BYTE], root=0)
print(f"rank={rank} size={size} host={socket.gethostname()} sum={total} last={buf[-1]}",
      flush=True)
"""

LINE = re.compile(r"rank=(\d+) size=(\d+) host=(\S+) sum=(\d+) last=(\d+)")


def check_ranks(stdout: str, ntasks: int = 6) -> Counter[str]:
    ranks = {}
    for line in stdout.splitlines():
        m = LINE.search(line)
        if m:
            rank, size, host, total, last = m.groups()
            ranks[int(rank)] = host
            assert int(size) == ntasks, line
            assert int(total) == ntasks * (ntasks - 1) // 2, line
            assert int(last) == 42, line
    assert sorted(ranks) == list(range(ntasks)), stdout
    return Counter(ranks.values())


def test_hello_mpi_apptainer_exec_across_nodes(cluster: Cluster, mpi_env: MpiEnv) -> None:
    d = cluster.workdir("mpi-")
    (d / "hello_mpi.py").write_text(HELLO)
    proc = cluster.run(
        ["srun", "-N3", "-n6", f"--mpi={mpi_env.srun_mpi}", "apptainer", "exec",
         str(mpi_env.sif), mpi_env.python, "hello_mpi.py"],
        env=mpi_env.env, cwd=d, timeout=180, check=True)
    per_node = check_ranks(proc.stdout)
    assert per_node == Counter({"n1": 2, "n2": 2, "n3": 2}), proc.stdout
    # no MPI/PMIx complaints (help texts, UCX errors) on stderr
    noise = [line for line in proc.stderr.splitlines()
             if line.strip() and not line.startswith(("INFO:", "srun: job"))]
    assert noise == [], proc.stderr


def test_hello_mpi_through_venvoy_run(cluster: Cluster, mpi_env: MpiEnv) -> None:
    d = cluster.workdir("mpi-run-")
    (d / "hello_mpi.py").write_text(HELLO)
    proc = cluster.run(
        ["srun", "-N3", "-n6", f"--mpi={mpi_env.srun_mpi}", *mpi_env.venvoy, "run",
         mpi_env.name, "--runtime", "apptainer", "--", "python", "hello_mpi.py"],
        env={**mpi_env.env, **mpi_env.venvoy_env}, cwd=d, timeout=180, check=True)
    per_node = check_ranks(proc.stdout)
    assert per_node == Counter({"n1": 2, "n2": 2, "n3": 2}), proc.stdout
