"""What every runtime adapter provides, and the helpers they share.

An adapter is a small class per runtime that knows four things: how to tell
whether its program is here and usable (cheaply, without starting it), how to
turn a :class:`~venvoy.runtime.request.RunRequest` into argv, how to load an image
given as a Docker/OCI archive, and what its version is. Callers never branch on
the runtime's name; they ask the adapter.
"""

from __future__ import annotations

import os

from venvoy.core.errors import BadRequest, ImageNotFound, VenvoyError
from venvoy.runtime.request import Gpu, RunRequest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path
    from typing import ClassVar


class Invocation:
    """A ready-to-exec command: argv plus the environment of the runtime process.

    ``env`` is the environment of the *runtime program* (it needs PATH, HOME,
    XDG_RUNTIME_DIR, ...). What the *container* sees is decided by argv or by
    the runtime's own prefixed variables, never by leaking this through.
    """

    __slots__ = ("argv", "env")

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self.env = env

    def __repr__(self) -> str:
        return f"Invocation(argv={self.argv!r}, env=<{len(self.env)} variables>)"


class EnvForward:
    """How a runtime takes host variables whose names are known only when the
    command starts (a job script picks them from an allow-list in each task).

    ``prefix``: set ``prefix + NAME`` in the runtime's own environment, with each
    character of ``escape`` backslash-escaped in the value (Apptainer);
    ``args``: arguments per variable, with ``{name}`` and ``{value}`` replaced,
    placed before the last ``before`` words of the run argv (the image and the
    command); the variable is also in the runtime's own environment.
    """

    __slots__ = ("args", "before", "escape", "prefix")

    def __init__(self, *, prefix: str | None = None, escape: str = "",
                 args: tuple[str, ...] = (), before: int = 0) -> None:
        self.prefix = prefix
        self.escape = escape
        self.args = args
        self.before = before

    def __repr__(self) -> str:
        return (f"EnvForward(prefix={self.prefix!r}, escape={self.escape!r}, args={self.args!r}, "
                f"before={self.before!r})")


class ImageForm:
    """How a runtime holds an image: one of the three constants below, compared
    with ``is`` (a tiny class, not an enum: importing enum costs start-up time).

    - ``ImageForm.REF``: a name in the runtime's own image store (Docker,
      Podman), per runtime and per user when rootless;
    - ``ImageForm.FILE``: a single image file (a SIF for Apptainer/Singularity);
    - ``ImageForm.DIR``: an unpacked root file system (Charliecloud).
    """

    __slots__ = ("name", "shared")

    REF: ClassVar[ImageForm]
    FILE: ClassVar[ImageForm]
    DIR: ClassVar[ImageForm]

    def __init__(self, name: str, shared: bool) -> None:
        self.name = name
        #: True when one copy in the store serves every runtime and user.
        self.shared = shared

    def __repr__(self) -> str:
        return f"ImageForm.{self.name.upper()}"


ImageForm.REF = ImageForm("ref", shared=False)
ImageForm.FILE = ImageForm("file", shared=True)
ImageForm.DIR = ImageForm("dir", shared=True)


class Runtime:
    """Base class of the adapters. Subclasses set the class attributes."""

    #: Name used on the command line and in ``VENVOY_RUNTIME``.
    name: ClassVar[str]
    #: Executable looked up on PATH.
    binary: ClassVar[str]
    #: False for adapters written to documentation only (no real program here).
    tested: ClassVar[bool] = True
    #: How an image is held (see :class:`ImageForm`).
    image_kind: ClassVar[ImageForm] = ImageForm.REF
    #: True when venvoy must stay the parent (to explain a missing image after
    #: the runtime fails); False when it can simply exec the runtime.
    wraps: ClassVar[bool] = False

    def __init__(self, path: str, environ: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.environ: Mapping[str, str] = os.environ if environ is None else environ

    # -- discovery ---------------------------------------------------------------
    @classmethod
    def find(cls, environ: Mapping[str, str] | None = None) -> str | None:
        """Path of the runtime's executable on PATH, or None."""
        env = os.environ if environ is None else environ
        return which(cls.binary, env.get("PATH", os.defpath))

    @property
    def rootless(self) -> bool:
        """Whether containers run without root privileges on the host."""
        return os.geteuid() != 0

    def problem(self) -> str | None:
        """Why this runtime cannot be used here, or None. Must not start it."""
        return None

    def version_argv(self) -> list[str]:
        return [self.path, "--version"]

    @staticmethod
    def parse_version(output: str) -> str:
        import re

        match = re.search(r"\d+\.\d+(?:\.\d+)?(?:[-+~.][\w.+~-]*)?", output)
        return match.group(0) if match else output.strip().splitlines()[0] if output.strip() else "?"

    # -- running -----------------------------------------------------------------
    def invocation(self, req: RunRequest) -> Invocation:
        """Check the request, then build the runtime's argv and process env."""
        self.check_image(req.image)
        if req.gpu is not None:
            self.check_gpu(req)
        return Invocation(self.run_argv(req), self.process_env(req))

    def run_argv(self, req: RunRequest) -> list[str]:
        raise NotImplementedError

    #: True when containers run outside the caller's process tree (a daemon
    #: starts them), so a batch job's CPU, memory and time limits do not hold.
    escapes_job_limits: ClassVar[bool] = False

    def env_forward(self, req: RunRequest) -> EnvForward | None:
        """How variables named only at run time reach the container (see
        :class:`EnvForward`), or None when this runtime cannot take them."""
        return None

    def process_env(self, req: RunRequest) -> dict[str, str]:
        """Environment for the runtime program itself (not the container)."""
        return dict(self.environ)

    def check_image(self, image: str) -> None:
        """Cheap up-front check that the image exists (no subprocess)."""
        if image.startswith("-"):
            raise BadRequest(f"bad image name {image!r}", "image names cannot start with '-'")

    def check_gpu(self, req: RunRequest) -> None:
        """Refuse a GPU request up front when the host has no such devices."""
        require_gpu_devices(req.gpu)

    def image_exists(self, image: str) -> bool:
        """Slow check (may start the runtime) used only after a failed run."""
        return True

    def missing_image_error(self, image: str) -> ImageNotFound:
        return ImageNotFound(
            f"image {image!r} not found by {self.name}",
            f"load it first (e.g. `{self.binary} load -i IMAGE.tar`) or check the name",
        )

    # -- images ------------------------------------------------------------------
    def remove_image(self, ref: str) -> None:
        """Remove ``ref`` from the runtime's own image store, if it has one (best effort)."""
        return None

    def remove_stale_containers(self, prefix: str) -> int:
        """Remove named containers a killed venvoy left (runtimes that keep containers)."""
        return 0

    def load_archive(self, archive: Path, ref: str, dest_dir: Path) -> str:
        """Bring a Docker-archive tar into this runtime; return the image to run.

        ``ref`` names the image (``name:tag``); runtimes that keep images as
        files or directories put them under ``dest_dir``.
        """
        raise VenvoyError(f"{self.name} cannot load images yet", "load the image by hand")

    def load_bound(self, archive: Path, tag: str, image_id: str) -> str:
        """For runtimes with an image store (``ImageForm.REF``): load ``archive``,
        check that it is image ``image_id``, tag it ``tag`` and return what to run."""
        raise VenvoyError(f"{self.name} cannot load images yet", "load the image by hand")

    #: True when the runtime keeps a store of named images that venvoy can
    #: inspect, pull into and save out of (:meth:`image_id`, :meth:`pull`,
    #: :meth:`save`); the others raise for runtimes without one.
    has_image_store: ClassVar[bool] = False

    def image_id(self, ref: str) -> str | None:
        """``sha256:<hex>`` of ``ref`` in the runtime's image store, or None if it has none."""
        raise self.unsupported("looking up images by name")

    def pull(self, ref: str, *, timeout: float | None = None) -> None:
        """Pull ``ref`` from its registry into the runtime's image store."""
        raise self.unsupported("pulling images")

    def save(self, image: str, dest: Path) -> None:
        """Write ``image`` (a name or ID in the image store) to ``dest`` as a Docker archive."""
        raise self.unsupported("saving images to a Docker archive")

    def unsupported(self, what: str) -> BadRequest:
        """The error for an image-store operation this runtime does not have."""
        return BadRequest(f"{what} is not supported by {self.name}",
                          "use a runtime with an image store (Docker, Podman) for this, "
                          "or pass an image tar")


# -- shared helpers ----------------------------------------------------------------

def which(name: str, path: str | None = None) -> str | None:
    """shutil.which without importing shutil (a measurable part of `venvoy run`)."""
    if path is None:
        path = os.environ.get("PATH", os.defpath)
    for directory in path.split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_gpu_devices(gpu: str | None) -> None:
    """Raise a clear error when the driver's device files are absent."""
    if gpu == Gpu.NVIDIA and not (os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")):
        raise BadRequest(
            "--gpu nvidia: this host has no NVIDIA driver devices (/dev/nvidiactl)",
            "run on a GPU node (e.g. inside `srun --gpus=1`) or drop --gpu",
        )
    if gpu == Gpu.AMD and not (os.path.exists("/dev/kfd") and os.path.isdir("/dev/dri")):
        raise BadRequest(
            "--gpu amd: this host has no ROCm devices (/dev/kfd and /dev/dri)",
            "run on an AMD GPU node or drop --gpu",
        )


def user_namespaces_enabled() -> bool:
    """Unprivileged runtimes need user namespaces; some sites switch them off."""
    try:
        with open("/proc/sys/user/max_user_namespaces") as fh:
            if int(fh.read().strip() or "0") == 0:
                return False
    except (OSError, ValueError):
        return True  # not Linux or not readable: let the runtime decide
    try:
        with open("/proc/sys/kernel/unprivileged_userns_clone") as fh:
            return fh.read().strip() != "0"
    except OSError:
        return True


def safe_file_name(ref: str) -> str:
    """A file name for an image reference, with nothing that could escape a dir."""
    import re

    name = re.sub(r"[^A-Za-z0-9._-]+", "_", ref).strip("._")
    return name or "image"
