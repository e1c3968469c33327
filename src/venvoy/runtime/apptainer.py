"""Apptainer: ``apptainer exec`` on a SIF, unprivileged, the HPC workhorse."""

from __future__ import annotations

import os

from venvoy.core.errors import ImageNotFound, VenvoyError
from venvoy.core.paths import apptainer_cache_dir
from venvoy.runtime.base import EnvForward, ImageForm, Runtime, safe_file_name, user_namespaces_enabled
from venvoy.runtime.oci_cli import load_error
from venvoy.runtime.request import Gpu, RunRequest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import ClassVar



def escape_env_value(value: str) -> str:
    """Apptainer evaluates prefixed variables as a shell would inside double
    quotes (`$HOME` expands, backticks run); escaping these three keeps values
    literal, as tested against the real program."""
    return value.replace("\\", "\\\\").replace("$", "\\$").replace("`", "\\`")

#: Image sources Apptainer resolves itself; anything else is a local path.
URI_SCHEMES = ("docker://", "docker-archive://", "docker-daemon://", "oci://", "oci-archive://",
               "library://", "oras://", "shub://", "instance://", "http://", "https://")


def _kernel_squashfs() -> frozenset[str] | None:
    """The squashfs compressors the running kernel's config enables; None if unknown."""
    import gzip

    release = os.uname().release
    text = ""
    for path in (f"/boot/config-{release}", "/proc/config.gz"):
        try:
            if path.endswith(".gz"):
                with gzip.open(path, "rt", errors="replace") as fh:
                    text = fh.read(1 << 22)
            else:
                with open(path, errors="replace") as fh:
                    text = fh.read(1 << 22)
        except OSError:
            continue
        break
    if "CONFIG_SQUASHFS=" not in text:
        return None
    names = {"zstd": "ZSTD", "lz4": "LZ4", "gzip": "ZLIB", "xz": "XZ"}
    return frozenset(c for c, k in names.items() if f"CONFIG_SQUASHFS_{k}=y" in text)


class Apptainer(Runtime):
    name: ClassVar[str] = "apptainer"
    binary: ClassVar[str] = "apptainer"
    image_kind: ClassVar[ImageForm] = ImageForm.FILE

    def problem(self) -> str | None:
        if self.rootless and not user_namespaces_enabled() and not self._setuid_starter():
            return "unprivileged Apptainer needs user namespaces (disabled here) or a setuid install"
        return None

    def _setuid_starter(self) -> bool:
        from pathlib import Path

        prefix = Path(os.path.realpath(self.path)).parent.parent
        return any(s.stat().st_mode & 0o4000 for s in prefix.glob("lib*/**/starter-suid"))

    def env_prefix(self) -> str:
        """Prefix of variables the runtime copies into the container, even with --cleanenv."""
        return "APPTAINERENV_"

    def run_argv(self, req: RunRequest) -> list[str]:
        # --cleanenv: the host environment stays out; only the request's
        # variables go in, through prefixed variables of the runtime process,
        # which keep values byte-exact (the --env flag splits on commas).
        # --no-home: like Docker and Podman, only what is mounted is visible.
        argv = [self.path, "exec", "--cleanenv", "--no-home"]
        if os.geteuid() == 0:
            argv.append("--userns")  # root without a setuid install: use a user namespace
        for m in req.mounts:
            argv += ["--bind", f"{m.source}:{m.target}" + (":ro" if m.read_only else "")]
        if req.workdir:
            argv += ["--pwd", req.workdir]
        if req.gpu == Gpu.NVIDIA:
            argv.append("--nv")
        elif req.gpu == Gpu.AMD:
            argv.append("--rocm")
        argv.append(req.image)
        argv += req.argv
        return argv

    def env_forward(self, req: RunRequest) -> EnvForward | None:
        # The same prefixed variables as process_env, escaped as escape_env_value does.
        return EnvForward(prefix=self.env_prefix(), escape="\\$`")

    def process_env(self, req: RunRequest) -> dict[str, str]:
        env = {
            k: v for k, v in self.environ.items()
            if not k.startswith(("APPTAINERENV_", "SINGULARITYENV_"))
        }
        for key, value in req.env:
            env[self.env_prefix() + key] = escape_env_value(value)
        return env

    def check_image(self, image: str) -> None:
        super().check_image(image)
        if image.startswith(URI_SCHEMES):
            return
        if not os.path.exists(image):
            raise ImageNotFound(
                f"image file {image} does not exist",
                "give the path of a .sif file (or a sandbox directory), or a docker:// reference",
            )

    def image_exists(self, image: str) -> bool:
        return image.startswith(URI_SCHEMES) or os.path.exists(image)

    def sif_compression(self) -> tuple[str, str]:
        """The squashfs compressor of the SIFs venvoy makes for this install, and why.

        ``""`` when venvoy cannot make SIFs itself (no ``sqfstar``): then
        ``apptainer build`` makes them, as with the setting ``apptainer``.
        ``VENVOY_SIF_COMPRESSION`` or the config key ``sif_compression``
        (auto|zstd|lz4|gzip|xz|apptainer) decide; ``auto``
        probes what this sqfstar writes and what this install mounts: the
        kernel (a setuid install, not as root) mounts what the running
        kernel's config enables (gzip if that config cannot be read);
        squashfuse (unprivileged, user namespaces) mounts them all.
        """
        from venvoy.image.squash import check_compression, compressors, sqfstar_path, takes_levels

        sqfstar = sqfstar_path(dict(self.environ))
        if sqfstar is None:
            return "", "sqfstar (squashfs-tools >= 4.5) not found: `apptainer build` makes SIFs"
        setting = self.environ.get("VENVOY_SIF_COMPRESSION", "").strip()
        where = "VENVOY_SIF_COMPRESSION"
        if not setting:
            from venvoy.core.config import load_config

            value = load_config(self.environ).get("sif_compression")
            setting, where = (value, "config sif_compression") if isinstance(value, str) else ("", "")
        if setting.strip().lower() == "apptainer":
            return "", f"set by {where}: `apptainer build` makes SIFs"
        if setting and check_compression(setting, where) != "auto":
            return setting.strip().lower(), f"set by {where}"
        made = compressors(sqfstar)
        mounts, how = self._mountable()
        usable = [c for c in ("zstd", "lz4", "gzip", "xz") if c in made and c in mounts]
        if not usable:
            return "gzip", f"auto: {how}; gzip, which every squashfs mount reads"
        # zstd at level 3 if this sqfstar takes levels (>= 4.6): small and fast;
        # else lz4 (zstd's default level 15 is 30x slower to write).
        fast = takes_levels(sqfstar)
        for choice in (("zstd", "lz4") if fast else ("lz4", "zstd")):
            if choice in usable:
                return choice, f"auto: {how}"
        return usable[0], f"auto: {how}"

    def _mountable(self) -> tuple[frozenset[str], str]:
        """The squashfs compressors this install can mount as this user, and how it mounts."""
        every = frozenset(("zstd", "lz4", "gzip", "xz"))
        if os.geteuid() != 0 and self._setuid_starter():
            found = _kernel_squashfs()
            if found is None:
                return frozenset(("gzip",)), "setuid install, kernel mount, kernel config unreadable"
            return found, "setuid install, kernel mount"
        return every, "unprivileged, squashfuse mount"

    def load_archive(self, archive: Path, ref: str, dest_dir: Path) -> str:
        import signal
        import subprocess

        from venvoy.core.fs import scratch_dir
        from venvoy.core.proc import preexec

        final = dest_dir / (safe_file_name(ref) + ".sif")
        env = dict(self.environ)
        compression, _why = self.sif_compression()
        # A scratch directory owned by this process: what a killed build leaves
        # (its build-temp-*, 200+ MB) is removed by the next conversion or init.
        with scratch_dir(dest_dir, "sif-build", stale=("build-temp-", "bundle-temp-")) as work:
            tmp = work / final.name
            if compression:
                from venvoy.image.sif import build_sif
                from venvoy.image.squash import FlattenUnsupported, sqfstar_path

                sqfstar = sqfstar_path(env)
                assert sqfstar is not None
                try:
                    build_sif(archive, tmp, sqfstar=sqfstar, compression=compression, env=env)
                except FlattenUnsupported:
                    tmp.unlink(missing_ok=True)  # an unusual layout: Apptainer's own build below
                else:
                    os.replace(tmp, final)
                    return str(final)
            # Apptainer unpacks layers in its temp dir; never on a small /tmp by surprise.
            env.setdefault("APPTAINER_TMPDIR", str(work))
            env.setdefault("SINGULARITY_TMPDIR", env["APPTAINER_TMPDIR"])
            env.setdefault("TMPDIR", env["APPTAINER_TMPDIR"])
            # Its layer cache (93 MB per base) goes into venvoy's store, not ~/.apptainer/cache.
            env.setdefault("APPTAINER_CACHEDIR", apptainer_cache_dir(self.environ))
            env.setdefault("SINGULARITY_CACHEDIR", env["APPTAINER_CACHEDIR"])
            argv = [self.path, "build", str(tmp), f"docker-archive://{archive}"]
            # The build stops (and cleans up after itself) when venvoy dies.
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  env=env, preexec_fn=preexec(signal.SIGTERM))
            if proc.returncode != 0:
                raise VenvoyError(
                    f"{self.binary} build from {archive} failed: {load_error(proc.stderr)}",
                    "check the archive and free space in APPTAINER_TMPDIR",
                )
            os.replace(tmp, final)
        return str(final)
