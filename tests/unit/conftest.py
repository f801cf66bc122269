"""Fixtures for unit tests; ``core`` runs a test once per implementation of handoff._core."""

import pytest

CORE_IMPLEMENTATIONS = ("cython", "python")


@pytest.fixture(params=CORE_IMPLEMENTATIONS)
def core(request):
    """The compiled core and its pure-Python twin, each with the full _core API.

    Fails (never skips) when the compiled modules are not built, so a broken build cannot
    pass the suite by testing only the twin.
    """
    from handoff import _core  # imported here so other unit tests collect without a build

    impls = _core.implementations()
    if request.param not in impls:
        pytest.fail(_core.NOT_BUILT)
    return impls[request.param]
