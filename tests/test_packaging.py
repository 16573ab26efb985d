"""The shipped systemd unit is valid and wires the daemon the way it expects to run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests._support import skip_or_fail

UNIT = Path(__file__).resolve().parent.parent / "config" / "nfsyncd.service"


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        skip_or_fail("systemd-analyze is not installed (Debian package systemd)")
    nfsyncd = Path(sys.executable).parent / "nfsyncd"
    unit = tmp_path / "nfsyncd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/nfsyncd", str(nfsyncd)))
    res = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True
    )
    # unknown keys are only warnings (exit 0), so stderr must be empty too
    assert res.returncode == 0 and res.stderr == "", res.stderr


def test_unit_is_notify_with_watchdog_and_reload() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=30s",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "CapabilityBoundingSet=CAP_NET_ADMIN",
        "RuntimeDirectory=nfsyncd",
    ):
        assert line in text.splitlines()
