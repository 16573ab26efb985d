"""``make demo`` as a user runs it: the failover walk-through, with and without sync.

The demo module runs as a subprocess with ``--json`` (progress on stderr, the summary on
stdout), so these tests see exactly what a user's shell would: the exit status, the verdict
and that nothing is left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests._support import require_binary

REPO = Path(__file__).resolve().parents[1]


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def run_demo(*args: str, timeout: float = 120) -> tuple[int, dict[str, Any], str, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nfsyncd.lab.demo", "--json", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    try:
        summary = json.loads(out)
    except ValueError:
        pytest.fail(f"no JSON summary (exit {proc.returncode}):\n{out}\n{err}")
    return proc.returncode, summary, err, proc.pid


def left_behind(pid: int) -> list[str]:
    return sorted(n for n in netns_names() if f"-{pid}-" in n)


def test_help_explains_the_demo() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nfsyncd.lab.demo", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0
    for word in ("failover", "failback", "--daemon", "--json", "--keep", "Exit status"):
        assert word in out.stdout


@pytest.mark.kernel
@pytest.mark.slow
def test_demo_connections_survive_failover_and_failback() -> None:
    require_binary("keepalived")
    rc, summary, err, pid = run_demo()
    assert rc == 0, f"{summary.get('verdict')}\n{err}"
    assert summary["ok"] is True and summary["survived"] is True
    assert summary["daemon"] == "nfsyncd"
    assert "survived" in summary["verdict"]
    for phase, gw in (("failover", "gw2"), ("failback", "gw1")):
        assert summary[phase]["happened"] and summary[phase]["to_gw"] == gw, summary[phase]
        assert summary[phase]["flowing"], summary[phase]
        notify = summary[phase]["notify_s"]
        assert notify is not None and summary[phase]["notify_rc"] == 0, summary[phase]
    assert summary["failover"]["flows_synced_before"] >= 4
    assert summary["resets"] == 0
    assert summary["max_tcp_stall_s"] < summary["stall_bound_s"]
    for kind in ("stream", "dnat", "interactive"):
        assert summary["traffic"][kind]["resets"] == 0, summary["traffic"][kind]
    assert summary["ftp"]["ok"] or not summary["ftp"]["ran"], summary["ftp"]
    assert "==> failover" in err and "==> failback" in err and "==> verdict" in err
    assert left_behind(pid) == []


@pytest.mark.kernel
@pytest.mark.slow
def test_demo_without_sync_reports_the_failure() -> None:
    require_binary("keepalived")
    rc, summary, err, pid = run_demo("--daemon", "none")
    assert rc == 1, f"{summary}\n{err}"
    assert summary["ok"] is False and summary["daemon"] == "none"
    assert summary["failover"]["happened"] and summary["failback"]["happened"]
    assert not summary["failover"]["flowing"], summary["failover"]
    assert summary["max_tcp_stall_s"] >= summary["stall_bound_s"] or summary["resets"] > 0
    assert "did NOT survive" in summary["verdict"]
    assert left_behind(pid) == []
