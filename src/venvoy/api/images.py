"""Running any image, without an environment: ``venvoy run --image REF`` and its
Python twin :func:`run_image` (one code path: :mod:`venvoy.store.images`).

``REF`` may be an image in the local Docker or Podman store, a registry
reference (``docker://HOST/REPO:TAG`` or ``HOST[:PORT]/REPO:TAG``), a ``.sif``,
an image directory or a Docker/OCI archive tar; each runtime gets its own form
of it, made once and cached (docs/images.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from venvoy.runtime.base import Runtime
    from venvoy.store.layout import Store


def image_for_run(image: str, runtime: Runtime, *, progress: Callable[[str], None] | None = None,
                  store: Store | None = None) -> str:
    """What ``runtime`` is given to run ``image``: pulled, saved, converted first if needed."""
    from venvoy.store.images import native_image
    from venvoy.store.layout import Store

    try:
        return native_image(store or Store(), runtime, image, progress=progress)
    except OSError as exc:
        return _as_store_error(exc)


def planned_image(image: str, runtime: Runtime, *, store: Store | None = None) -> str:
    """What ``runtime`` would be given, without making anything (``--dry-run``)."""
    from venvoy.store import images
    from venvoy.store.layout import Store

    try:
        return images.planned_image(store or Store(), runtime, image)
    except OSError as exc:
        return _as_store_error(exc)


def _as_store_error(exc: OSError) -> str:
    """Raise ``exc`` as :func:`venvoy.api.environments.store_errors` words it (one line
    for a store that cannot be written), imported only then: ``venvoy run`` stays light."""
    from venvoy.api.environments import store_errors

    def again() -> str:
        raise exc

    return store_errors(again)()


def run_image(image: str, argv: Sequence[str], *, exec_: bool = False,
              runtime: str | Runtime | None = None, mounts: Iterable[str] = (),
              env: Iterable[str] | Mapping[str, str] = (), env_pass: Iterable[str] = (),
              workdir: str | None = None, gpu: str | None = None, tty: bool | None = None,
              progress: Callable[[str], None] | None = None, store: Store | None = None) -> int:
    """Run ``argv`` in ``image``; returns its exit status (``exec_``: exec it, for the CLI).

    The request is checked (mounts, variables, GPU) before anything is pulled.
    """
    from venvoy.core.errors import ImageNotFound
    from venvoy.runtime import runner
    from venvoy.runtime.base import Runtime
    from venvoy.runtime.detect import choose_runtime
    from venvoy.runtime.request import make_request
    from venvoy.store.layout import Store

    store = store or Store()
    req = make_request(image, argv, mounts=mounts, env=env, env_pass=env_pass, workdir=workdir,
                       gpu=gpu, tty=tty)
    rt = runtime if isinstance(runtime, Runtime) else choose_runtime(runtime, store.environ).runtime
    if req.gpu is not None:
        rt.check_gpu(req)
    req.image = image_for_run(image, rt, progress=progress, store=store)
    try:
        if exec_:
            runner.exec_run(rt, req)
        return runner.run(rt, req)
    except ImageNotFound:
        if req.image == image:
            raise  # the runtime's own image, as it was given: nothing venvoy made
        # Removed from Docker/Podman behind our back: load it again, once.
        from venvoy.store.forms import forget_native
        from venvoy.store.layout import IMAGE_REPOSITORY

        forget_native(store, rt, req.image, IMAGE_REPOSITORY)
        req.image = image_for_run(image, rt, progress=progress, store=store)
        if exec_:
            runner.exec_run(rt, req)
        return runner.run(rt, req)


def cached_images(store: Store | None = None) -> list[dict[str, Any]]:
    """What the image cache holds: each archive's image ID and size (for reports)."""
    from venvoy.store.images import cached
    from venvoy.store.layout import Store

    return cached(store or Store())


__all__ = ["cached_images", "image_for_run", "planned_image", "run_image"]
