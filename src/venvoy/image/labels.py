"""What venvoy writes into every image: where the venv lives, and its labels."""

from __future__ import annotations

VENV_PATH = "/opt/venv"
META_PATH = "opt/venvoy"
LABEL = "org.venvoy"


def image_labels(*, name: str, python: str, lock_hash: str, identity: str, base_digest: str,
                 created: str, version: str) -> dict[str, str]:
    """The ``org.venvoy.*`` labels of an environment's image: the one place they are built,
    for the image venvoy builds and for the build contexts it exports.

    ``version`` is the venvoy version that built the image.
    """
    return {
        f"{LABEL}.version": version,
        f"{LABEL}.lock-hash": lock_hash,
        f"{LABEL}.base-digest": base_digest,
        f"{LABEL}.python": python,
        f"{LABEL}.build-time": created,
        f"{LABEL}.identity": identity,
        f"{LABEL}.name": name,
    }


__all__ = ["LABEL", "META_PATH", "VENV_PATH", "image_labels"]
