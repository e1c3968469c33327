"""What Docker and Podman share: the same ``run`` grammar and image store verbs."""

from __future__ import annotations

from venvoy.core.errors import BadRequest, DamagedError, RuntimeFailed, VenvoyError
from venvoy.runtime.base import EnvForward, ImageForm, Runtime
from venvoy.runtime.request import Gpu, RunRequest

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Mapping
    from pathlib import Path
    from typing import ClassVar


class OciCliRuntime(Runtime):
    """Docker-compatible CLIs: one long-lived image store, ``run --rm``."""

    image_kind: ClassVar[ImageForm] = ImageForm.REF
    # Stay the parent so that exit 125 can be explained (missing image) and the
    # `--rm` clean-up by the client is waited for.
    wraps: ClassVar[bool] = True

    def env_forward(self, req: RunRequest) -> EnvForward | None:
        # `-e NAME` without a value: the client copies it from its own environment.
        return EnvForward(args=("-e", "{name}"), before=len(req.argv) + 1)

    def user_args(self, req: RunRequest) -> list[str]:
        """How the caller's uid is kept inside; differs between the two."""
        return []

    def gpu_args(self, req: RunRequest) -> list[str]:
        return []

    def container_env(self, req: RunRequest) -> list[tuple[str, str]]:
        """The request's variables; with only the allocated NVIDIA GPUs passed in
        (see :func:`allocated_gpus`), the container numbers them 0..n-1, so a
        host CUDA_VISIBLE_DEVICES that names those same GPUs is renumbered to
        match. One that counts within the allocation already (Slurm's device
        cgroups), or a value the user set with --env, is kept."""
        gpus = allocated_gpus(self.environ) if req.gpu == Gpu.NVIDIA else None
        host = self.environ.get("CUDA_VISIBLE_DEVICES")
        if not gpus or host is None or list(dict.fromkeys(t.strip() for t in host.split(","))) != gpus:
            return list(req.env)
        inside = ",".join(str(i) for i in range(len(gpus)))
        return [(k, inside if k == "CUDA_VISIBLE_DEVICES" and v == host else v)
                for k, v in req.env]

    def run_argv(self, req: RunRequest) -> list[str]:
        # --init: a tiny init as PID 1 forwards SIGTERM/SIGINT to the command,
        # which as PID 1 itself would ignore them. --network=host: the same
        # network as Apptainer and Charliecloud give, and it works rootless
        # where /dev/net/tun is closed. --pull=never: a missing image is an
        # error now, not a hang on a registry that cannot be reached.
        argv = [self.path, "run", "--rm", "--init", "--network=host", "--pull=never", "-i"]
        if req.name:
            argv += ["--name", req.name]
        if req.tty:
            argv.append("-t")
        argv += self.user_args(req)
        for m in req.mounts:
            argv += ["-v", f"{m.source}:{m.target}" + (":ro" if m.read_only else "")]
        for key, value in self.container_env(req):
            argv += ["-e", f"{key}={value}"]
        if req.workdir:
            argv += ["-w", req.workdir]
        if req.gpu is not None:
            argv += self.gpu_args(req)
        argv.append(req.image)
        argv += req.argv
        return argv

    def amd_args(self) -> list[str]:
        return ["--device", "/dev/kfd", "--device", "/dev/dri", "--group-add", "video"]

    def check_image(self, image: str) -> None:
        """A file path is no image of this runtime's store: say so in one line,
        rather than let the runtime print its own three about the reference."""
        super().check_image(image)
        if is_path_like(image):
            raise BadRequest(
                f"image {image!r} is a file path, but {self.name} runs images from its own store",
                f"load a Docker archive with `venvoy load FILE.tar --name NAME:TAG --runtime "
                f"{self.name}` and pass --image NAME:TAG, or run a .sif with --runtime apptainer")

    def image_exists(self, image: str) -> bool:
        import subprocess

        proc = subprocess.run(
            [self.path, "image", "inspect", "--format", "{{.Id}}", image],
            stdin=subprocess.DEVNULL, capture_output=True, env=dict(self.environ),
        )
        return proc.returncode == 0

    def remove_image(self, ref: str) -> None:
        import subprocess

        subprocess.run([self.path, "rmi", ref], stdin=subprocess.DEVNULL, capture_output=True,
                       env=dict(self.environ))

    def remove_stale_containers(self, prefix: str) -> int:
        """Remove containers named ``prefix...`` (see core.fs.container_name) whose
        venvoy was killed: one killed before its container started is left in
        the "Created" state, which ``--rm`` never removes. Returns how many."""
        import subprocess

        from venvoy.core.fs import container_owner_alive

        proc = subprocess.run([self.path, "ps", "-a", "--filter", f"name=^{prefix}_",
                               "--format", "{{.Names}}"], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, env=dict(self.environ))
        stale = [n for n in proc.stdout.split() if n.startswith(f"{prefix}_")
                 and container_owner_alive(n) is False]
        if stale:
            subprocess.run([self.path, "rm", "-f", *stale], stdin=subprocess.DEVNULL,
                           capture_output=True, env=dict(self.environ))
        return len(stale)

    # -- the image store: inspect, pull, save ----------------------------------------
    has_image_store: ClassVar[bool] = True
    #: Extra ``save`` arguments that make it write a Docker archive.
    save_args: ClassVar[tuple[str, ...]] = ()

    def store_command(self, args: list[str], timeout: float | None = None,
                      ) -> subprocess.CompletedProcess[str]:
        """Run ``<runtime> ARGS`` (argv, no shell) with its output captured."""
        import subprocess

        return subprocess.run([self.path, *args], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, errors="replace", env=dict(self.environ), timeout=timeout)

    def image_id(self, ref: str) -> str | None:
        import subprocess

        check_ref(ref)
        try:
            proc = self.store_command(["image", "inspect", "--format", "{{.Id}}", ref], timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        out = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not out:
            return None
        found = out[0].strip()
        found = found if found.startswith("sha256:") else f"sha256:{found}"
        hexdigest = found[len("sha256:"):]
        if len(hexdigest) != 64 or any(c not in "0123456789abcdef" for c in hexdigest):
            return None
        return found

    def pull(self, ref: str, *, timeout: float | None = None) -> None:
        import subprocess

        check_ref(ref)
        try:
            proc = self.store_command(["pull", ref], timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeFailed(f"{self.name} pull {ref} took more than {timeout or 0:.0f} s") from None
        except OSError as exc:
            raise RuntimeFailed(f"cannot run {self.path}: {exc.strerror}") from None
        if proc.returncode != 0:
            raise RuntimeFailed(f"{self.name} pull {ref} failed: {brief(proc.stderr or proc.stdout)}",
                                "check the image name and that its registry is reachable")

    def save(self, image: str, dest: Path) -> None:
        check_ref(image)
        try:
            proc = self.store_command(["save", "-o", str(dest), *self.save_args, image])
        except OSError as exc:
            raise RuntimeFailed(f"cannot run {self.path}: {exc.strerror}") from None
        if proc.returncode != 0:
            raise RuntimeFailed(f"{self.name} save {image} failed: {brief(proc.stderr or proc.stdout)}",
                                f"check the free space of {dest.parent}")

    def run_load(self, archive: Path, hint: str) -> str:
        """``load -i archive``; its output, or one line with what went wrong."""
        import subprocess

        proc = subprocess.run(
            [self.path, "load", "-i", str(archive)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, env=dict(self.environ),
        )
        if proc.returncode != 0:
            raise VenvoyError(
                f"{self.name} load of {archive} failed: {load_error(proc.stderr or proc.stdout)}",
                hint,
            )
        return proc.stdout

    def load_archive(self, archive: Path, ref: str, dest_dir: Path) -> str:
        import re

        out = self.run_load(archive, "check that the file is a Docker or OCI archive")
        loaded = re.findall(r"Loaded image(?:\(s\))?(?: ID)?:\s*(\S+)", out)
        if not loaded:
            raise VenvoyError(f"{self.name} load printed no image name", out.strip())
        source = loaded[-1].split(",")[0]
        if source != ref:
            self.tag(source, ref)
        return ref

    def load_bound(self, archive: Path, tag: str, image_id: str) -> str:
        """Load ``archive``, check it holds image ``image_id``, tag that ID as ``tag``
        (so it is not pruned as dangling) and return the ID, which is what runs.

        Tags can be moved by any later ``load`` of a crafted archive (its
        manifest names the tags it sets); an image ID is its content's digest.
        """

        self.run_load(archive, "check that the file is a Docker or OCI archive and the free "
                               f"space of the {self.name} store")
        found = self.image_id(image_id)
        if found != image_id:
            raise DamagedError(
                f"{archive} did not load as image {image_id} into {self.name}"
                + (f" (got {found})" if found else ""),
                "the store's image is damaged: rebuild the environment with `venvoy init NAME --force`",
            )
        self.tag(image_id, tag)
        return image_id

    def tag(self, source: str, ref: str) -> None:
        """``tag source ref``, or one line with why not."""
        import subprocess

        proc = subprocess.run(
            [self.path, "tag", source, ref],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, env=dict(self.environ),
        )
        if proc.returncode != 0:
            raise VenvoyError(f"{self.name} tag {source} {ref} failed: {brief(proc.stderr)}")


def load_error(text: str, limit: int = 400) -> str:
    """What a failed ``load`` said that matters: its first error line (the cause,
    e.g. "no space left on device") and its last line, within ``limit`` characters."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "(no output)"
    first = next((line for line in lines if "error" in line.lower()), lines[0])
    shown = first if first == lines[-1] else f"{first} ... {lines[-1]}"
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


#: Host variables naming the NVIDIA GPUs this job may use, node-wide ones first:
#: Slurm's lists are node-wide indices (as CDI and Docker number devices), while
#: under Slurm's device cgroups CUDA_VISIBLE_DEVICES counts from 0 within the job.
NVIDIA_ALLOCATION_VARIABLES = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "NVIDIA_VISIBLE_DEVICES",
                               "CUDA_VISIBLE_DEVICES")
#: The most GPUs (or MIG slices) one allocation variable may name.
MAX_GPUS = 512
#: Values that mean "no GPU" (Slurm writes NoDevFiles for a job without GPUs).
NO_GPU_VALUES = ("", "none", "void", "nodevfiles", "-1")


def gpu_name_ok(token: str) -> bool:
    """An index ("3"), a MIG index ("3:1", as CDI names them) or a GPU-/MIG- UUID."""
    if not token.isascii():
        return False
    if token.startswith(("GPU-", "MIG-")):
        return all(c.isalnum() or c in "-/" for c in token)
    return all(part.isdigit() for part in token.split(":")) and token.count(":") <= 1


def allocated_gpus(environ: Mapping[str, str]) -> list[str] | None:
    """The NVIDIA GPUs (indices or GPU-/MIG- UUIDs) the host environment
    allows, or None when it does not restrict them (unset or ``all``)."""
    for var in NVIDIA_ALLOCATION_VARIABLES:
        value = environ.get(var)
        if value is None:
            continue
        value = value.strip()
        if value.lower() == "all":
            return None
        if value.lower() in NO_GPU_VALUES:
            raise BadRequest(f"--gpu nvidia: {var}={value!r} gives this job no GPU",
                             f"ask for one (e.g. `srun --gpus=1`) or unset {var}")
        tokens = [t.strip() for t in value.split(",")]
        if len(tokens) > MAX_GPUS:  # each is a runtime argument: no node has that many
            raise BadRequest(f"--gpu nvidia: {var} names {len(tokens)} GPUs (at most {MAX_GPUS})",
                             "give only the GPUs of this job, or unset it")
        for t in tokens:
            if not gpu_name_ok(t):
                raise BadRequest(f"--gpu nvidia: {var}={value[:80]!r} is not a list of GPU indices or "
                                 "UUIDs", "write it as e.g. 0,1 or GPU-<uuid>, or unset it")
        # "0,0": one GPU, passed once (Podman refuses a device named twice).
        return list(dict.fromkeys(tokens))
    return None


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def brief(text: str, limit: int = 240) -> str:
    """The last non-empty line of a runtime's output, cut to ``limit`` characters."""
    line = last_line(text).strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


def is_path_like(image: str) -> bool:
    """Whether ``image`` names a file rather than an image reference: a reference
    never starts with '/', '.' or '~', and no image is called ``*.sif`` or ``*.tar``."""
    return image.startswith(("/", ".", "~")) or image.lower().endswith((".sif", ".tar"))


def check_ref(ref: str) -> None:
    """Refuse an image name the runtime would read as an option, or that could not be one
    (empty, too long, spaces or control characters that would garble a message)."""
    if not ref or ref.startswith("-") or not ref.isprintable() or " " in ref or len(ref) > 1024:
        raise BadRequest(f"bad image name {ref[:80]!r}",
                         "give an image name such as python:3.11-slim (no spaces, no leading '-')")


__all__ = ["Gpu", "OciCliRuntime", "allocated_gpus", "brief", "check_ref", "is_path_like",
           "last_line", "load_error"]
