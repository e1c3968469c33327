"""The seed's Python API, on the same code path as the CLI (:mod:`venvoy.api.environments`)::

    from venvoy import VenvoyEnvironment

    env = VenvoyEnvironment("my-research-env", python_version="3.11",
                            packages=["numpy==2.*"])        # or requirements_files=[...]
    env.initialize()                                         # venvoy init
    env.run("python my_analysis.py", additional_mounts=["/scratch/data:/workspace/data"])

A string command is split with :func:`shlex.split` (shell quoting rules, no
shell features: no pipes, globs or ``$VAR``); pass a list to give argv exactly.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any


class VenvoyEnvironment:
    """A named, reproducible Python environment."""

    def __init__(self, name: str, python_version: str = "3.11", runtime: str | None = None, *,
                 packages: Sequence[str] = (), requirements_files: Sequence[str] = (),
                 base: str | None = None, offline: bool | None = None) -> None:
        from venvoy.core.names import check_name

        self.name = check_name(name)
        self.python_version = python_version
        self.runtime = runtime
        self.packages = list(packages)
        self.requirements_files = list(requirements_files)
        self.base = base
        self.offline = offline

    def initialize(self, force: bool = False, quiet: bool = True) -> dict[str, Any]:
        """Build the environment (a no-op when nothing changed); returns its record."""
        from venvoy.api import environments as envs
        from venvoy.build.requirements import check_lines, read_requirements
        from venvoy.core.progress import Reporter

        text = read_requirements(self.requirements_files)
        # The same check as `init -r` and every record: no pip options, no control characters.
        text += check_lines("".join(f"{p.strip()}\n" for p in self.packages if p.strip()),
                            "packages")
        rep = Reporter(quiet=quiet)
        try:
            env, _built = envs.init(self.name, python=self.python_version, requirements_text=text,
                                    base=self.base, runtime=self.runtime, force=force,
                                    offline=self.offline, progress=rep.step,
                                    download_progress=rep.download)
        finally:
            rep.close()
        return env.as_dict()

    def run(self, command: str | Sequence[str], additional_mounts: Sequence[str] = (),
            env: Mapping[str, str] | None = None, workdir: str | None = None,
            gpu: str | None = None) -> int:
        """Run a command in the environment; returns its exit status."""
        from venvoy.api import environments as envs

        argv = shlex.split(command) if isinstance(command, str) else list(command)
        return envs.run(self.name, argv, runtime=self.runtime, mounts=additional_mounts,
                        env=env or {}, workdir=workdir, gpu=gpu, tty=False)

    def submit(self, command: str | Sequence[str], **options: Any) -> Any:
        """Submit a Slurm job running ``command`` in the environment (see
        :func:`venvoy.slurm.submit` for the options); returns its ``Job``."""
        from venvoy.cluster.submit import SubmitOptions, command_argv, submit

        argv = command_argv(command)
        options.setdefault("runtime", self.runtime)
        return submit(self.name, argv, SubmitOptions.from_kwargs(options))

    def verify(self) -> dict[str, Any]:
        """Is this still the environment that was built? (see `venvoy verify`)"""
        from venvoy.api import environments as envs

        return envs.verify(self.name, runtime=self.runtime)

    def export_archive(self, path: str) -> str:
        """Write the environment (image, lock, manifest) to one verified archive file."""
        from pathlib import Path

        from venvoy.api import environments as envs
        from venvoy.transport.archive import export_archive

        return str(export_archive(envs.get(self.name), Path(path)))

    def push(self, ref: str) -> str:
        """Publish the environment to an OCI registry (``HOST[:PORT]/REPO[:TAG]``); returns
        the reference pinned by digest (see `venvoy push`)."""
        from venvoy.api.registry import push

        return push(self.name, ref)

    def import_archive(self, path: str, force: bool = False) -> dict[str, Any]:
        """Import an archive (or wheelhouse) as this environment; returns its record."""
        from venvoy.api import environments as envs

        return envs.import_any(path, name=self.name, runtime=self.runtime, force=force,
                               offline=self.offline).as_dict()
