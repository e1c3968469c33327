"""Environment names: a small, safe alphabet, enforced everywhere a name enters."""

from __future__ import annotations

from venvoy.core.errors import BadRequest

NAME_RULE = "1-63 characters: lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"


def check_name(name: str) -> str:
    """Return ``name`` if it is valid, else raise one clear line.

    ``[a-z0-9][a-z0-9._-]{0,62}`` and not ``.``/``..``-like: a name becomes a
    directory in the store and part of an image tag, so nothing in it may
    escape a directory or mean something to a runtime.
    """
    ok = (
        0 < len(name) <= 63
        and name.isascii()
        and (name[0].islower() or name[0].isdigit())
        and all(c.islower() or c.isdigit() or c in "._-" for c in name)
        and ".." not in name
    )
    if not ok:
        raise BadRequest(f"invalid environment name {name!r}", f"use {NAME_RULE}")
    return name
