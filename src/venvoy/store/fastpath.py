"""The part of ``venvoy run NAME`` that must be fast: find the runtime's image
of an environment that is already built and converted, with a couple of stat
calls and one small read. No json, no pathlib, no locks (they would double
the start-up time); anything not ready yet falls back to :mod:`venvoy.envs`.
"""

from __future__ import annotations

import os

from venvoy.core.names import check_name
from venvoy.core.paths import data_dir

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from venvoy.runtime.base import Runtime

#: Per environment: "<image id> <identity>", written by venvoy.envs with env.json.
IMAGE_FILE = "image"


def env_image(name: str, environ: Mapping[str, str] | None = None) -> tuple[str, str, str] | None:
    """(store root, image id, tag) of a built environment, or None."""
    root = data_dir(environ)
    try:
        with open(os.path.join(root, "envs", check_name(name), IMAGE_FILE)) as fh:
            image_id, identity = fh.read().split()
    except (OSError, ValueError):
        return None
    return root, image_id, env_tag(name, identity)


def env_tag(name: str, identity: str) -> str:
    return f"localhost/venvoy/{name}:{identity[:12]}"


def marker_name(runtime: Runtime, image_id: str, tag: str) -> str:
    """File name of the note that a Docker/Podman store holds ``tag``."""
    scope = "rootless" if runtime.rootless else "root"
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in tag)
    return f"{runtime.name}-{scope}-{os.getuid()}-{image_id.partition(':')[2][:16]}-{safe}"


def cached_image(root: str, runtime: Runtime, image_id: str, tag: str,
                 environ: Mapping[str, str] | None = None) -> str | None:
    """The runtime's form of ``image_id`` if it already exists, else None."""
    hexid = image_id.partition(":")[2]
    if len(hexid) != 64 or not hexid.isalnum():
        return None
    if runtime.image_kind == "file":
        env = os.environ if environ is None else environ
        if env.get("VENVOY_LIBRARY"):
            candidate = os.path.join(env["VENVOY_LIBRARY"], f"{hexid}.sif")
            if os.path.isfile(candidate):
                return candidate
        sif = os.path.join(root, "cache", "sif", f"{hexid}.sif")
        return sif if os.path.isfile(sif) else None
    if runtime.image_kind == "dir":
        d = os.path.join(root, "cache", "ch", hexid)
        return d if os.path.isdir(d) else None
    marker = os.path.join(root, "cache", "loaded", marker_name(runtime, image_id, tag))
    return tag if os.path.exists(marker) else None
