"""Property-based fuzzing of everything that parses untrusted bytes.

Budgets: the ``ci`` profile (default) keeps the whole fuzz suite to a few
minutes on a 2-core machine; maintainers run a long campaign with
``VENVOY_FUZZ_PROFILE=long`` (see docs/security.md). The invariant every
fuzzer checks: a clean one-line :class:`~venvoy.core.errors.VenvoyError`, or a
result inside the destination; never a write outside it, never a traceback.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=int(os.environ.get("VENVOY_FUZZ_EXAMPLES", "200")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
    derandomize=False, print_blob=True)
settings.register_profile(
    "long", max_examples=20000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("VENVOY_FUZZ_PROFILE", "ci"))
