"""The library: what the CLI and Python users call, one code path each --
``environments`` (init, lock, run, verify, list, remove, export, import),
``images`` (run any image, no environment), the
seed's ``VenvoyEnvironment`` and ``ContainerManager``.
"""
