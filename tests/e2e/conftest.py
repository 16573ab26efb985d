"""Fixtures of the end-to-end failover scenarios: one :class:`FailoverLab` per daemon kind.

``lab`` is module-scoped and parametrised indirectly (``@pytest.mark.parametrize("lab",
[...], indirect=True)``), so pytest groups the tests by daemon kind and only one lab (six
namespaces, two keepalived, two daemons) exists at a time. ``ready_lab`` puts the lab back
into the known starting state before each test: links up, both daemons and both keepalived
running, gw1 primary with its notify script done. A test that fails half-way therefore
does not poison the next one; if the lab cannot be restored the test errors with the
lab's state.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from nfsyncd.lab.demo import reset_lab
from nfsyncd.lab.failover_lab import GATEWAYS, FailoverLab
from tests._support import kernel_unavailable, skip_or_fail


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[FailoverLab]:
    kind = getattr(request, "param", "nfsyncd")
    reason = kernel_unavailable()
    if reason is not None:
        skip_or_fail(reason)
    needed = ["keepalived"] + (["conntrackd"] if kind == "conntrackd" else [])
    missing = [b for b in needed if shutil.which(b) is None]
    if missing:
        skip_or_fail(f"needs {', '.join(missing)} (run scripts/install-deps.sh)")
    failover_lab = FailoverLab(kind)
    try:
        yield failover_lab
    finally:
        print(f"==== {kind} lab state at teardown\n{failover_lab.state_text()}")
        for gw in GATEWAYS:
            print(failover_lab.daemon_log(gw)[-3000:])
        failover_lab.close()


@pytest.fixture
def ready_lab(lab: FailoverLab) -> FailoverLab:
    """The lab in its starting state (gw1 primary, everything running)."""
    reset_lab(lab, timeout=30)
    return lab
