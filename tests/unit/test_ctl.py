"""nfsyncctl against a scripted daemon (no root): argument handling, conntrackd's flags,
output formats and exit codes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nfsyncd import ctl
from nfsyncd.model import IPPROTO_TCP, Flow, Status, TcpInfo, Tuple
from nfsyncd.render import expect_line, flow_json, flow_line
from tests._support import skip_or_fail

FLOW = Flow(
    Tuple(bytes([198, 18, 0, 2]), bytes([198, 18, 0, 1]), IPPROTO_TCP, 40000, 22),
    Tuple(bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]), IPPROTO_TCP, 22, 40000),
    status=int(Status.SEEN_REPLY | Status.ASSURED | Status.CONFIRMED),
    timeout=431999,
    mark=7,
    zone=3,
    protoinfo=TcpInfo(state=3),
    helper="ftp",
)

STATUS = {
    "version": "0.1.0",
    "pid": 42,
    "uptime": 3725.0,
    "config": "/etc/nfsyncd/nfsyncd.toml",
    "mode": "mirror",
    "ready": True,
    "source": "events",
    "flows": 1,
    "expectations": 0,
    "overruns": 0,
    "resyncs": 1,
    "last_resync": None,
    "control_socket": "/x.sock",
    "metrics": None,
    "reloads": 0,
    "reload_failures": 0,
}
CACHE = {
    "active": 1,
    "created": 5,
    "create_failed": 0,
    "no_space": 0,
    "updated": 9,
    "update_failed": 0,
    "update_not_found": 0,
    "deleted": 4,
    "delete_failed": 1,
    "delete_not_found": 1,
    "filtered": 2,
}


COMMIT = {
    "flows": 10,
    "flows_failed": 1,
    "related": 2,
    "expects": 3,
    "expects_failed": 0,
    "seconds": 0.01,
    "errors": {"EEXIST": 1},
}
SYNC_REPLIES: dict[str, dict[str, Any]] = {
    "commit": {"commit": COMMIT},
    "flush-kernel": {"flows": 5, "expects": 1},
    "bulk": {"queued": 12},
    "request-resync": {},
    "purge": {"purge_in": 60.0},
    "notify": {
        "transition": {
            "role": "primary",
            "seconds": 0.05,
            "commit": COMMIT,
            "bulk": 13,
            "purge_in": None,
            "resync_requested": False,
        }
    },
}


class FakeDaemon:
    """Answers control requests from a script; remembers what it was asked."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[dict[str, Any]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(5)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _reply(self, req: dict[str, Any]) -> list[dict[str, Any]]:
        cmd = req["cmd"]
        if cmd == "status":
            return [{"ok": True, **STATUS}]
        if cmd == "stats":
            return [{"ok": True, "stats": {"cache": {"internal": CACHE}}}]
        if cmd == "dump" and req.get("what") == "ct":
            return [{"item": flow_json(FLOW, 12.5)}, {"ok": True, "count": 1}]
        if cmd == "flush":
            return [{"ok": False, "error": "flush refused for the test"}]
        if cmd == "resync":
            r = {"flows": 1, "expects": 0, "added": 0, "updated": 0, "removed": 0, "seconds": 0.1}
            return [{"ok": True, "resync": r}]
        if cmd in SYNC_REPLIES:
            return [{"ok": True, **SYNC_REPLIES[cmd]}]
        return [{"ok": True, "count": 0}]

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as reader:
                for line in reader:
                    req = json.loads(line)
                    self.requests.append(req)
                    for msg in self._reply(req):
                        conn.sendall(json.dumps(msg).encode() + b"\n")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeDaemon]:
    daemon = FakeDaemon(tmp_path / "ctl.sock")
    try:
        yield daemon
    finally:
        daemon.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = ctl.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_status_human_and_json(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--socket", str(fake.path), "status")
    assert code == 0
    assert "nfsyncd 0.1.0 (pid 42), up 1h 2m 5s" in out
    assert "internal cache:  1 flows, 0 expectations" in out
    code, out, _ = run(capsys, "--socket", str(fake.path), "--json", "status")
    assert code == 0 and json.loads(out)["pid"] == 42


def test_conntrackd_i_flag_prints_conntrackd_lines(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "--socket", str(fake.path), "-i")
    assert code == 0
    assert out == (
        "tcp      6 ESTABLISHED src=198.18.0.2 dst=198.18.0.1 sport=40000 dport=22 "
        "src=198.18.0.1 dst=198.18.0.2 sport=22 dport=40000 [ASSURED] mark=7 zone=3 "
        "helper=ftp [active since 12s]\n"
    )
    assert fake.requests[-1] == {"cmd": "dump", "cache": "internal", "what": "ct"}


def test_flag_arguments_are_prefix_matched(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "--socket", str(fake.path), "-e", "exp")[0] == 0
    assert fake.requests[-1] == {"cmd": "dump", "cache": "external", "what": "expect"}
    assert run(capsys, "--socket", str(fake.path), "-s", "run")[0] == 0
    assert fake.requests[-1] == {"cmd": "stats", "section": "runtime"}
    assert run(capsys, "--socket", str(fake.path), "-R")[0] == 0
    assert fake.requests[-1] == {"cmd": "resync", "what": "all"}
    # as in conntrackd, the last command given wins
    assert run(capsys, "--socket", str(fake.path), "-i", "-k")[0] == 0
    assert fake.requests[-1] == {"cmd": "shutdown"}


def test_stats_in_conntrackd_layout(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--socket", str(fake.path), "-s")
    assert code == 0
    assert out.startswith("cache internal:\ncurrent active connections:\t           1\n")
    assert "connections destroyed:\t\t           4\tfailed:\t           1\n" in out
    code, out, _ = run(capsys, "--socket", str(fake.path), "stats", "cache")
    assert "\tdeletion created/failed:\t           4/           1\n" in out
    # a section that needs peer sync prints nothing, like conntrackd without that feature
    code, out, _ = run(capsys, "--socket", str(fake.path), "-s", "network")
    assert (code, out) == (0, "")


def test_daemon_errors_exit_1_with_the_reason(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "--socket", str(fake.path), "flush")
    assert code == 1 and "flush refused for the test" in err


def test_unreachable_daemon_exits_1_and_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "--socket", str(tmp_path / "none.sock"), "-s")
    assert code == 1 and out == ""
    assert "cannot connect to" in err and "is nfsyncd running?" in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["bogus"], "invalid choice"),
        (["-x"], "use --json"),
        (["-i", "-x"], "use --json"),
        (["-c", "bogus"], "expected one of"),
        (["notify", "master"], "invalid choice"),
        (["-s", "nonsense"], "expected one of"),
        (["dump"], "the following arguments are required"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        ctl.main(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main([]) == 2
    assert "conntrackd-compatible flags" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "avoided"),
    [
        ("-i", ("trio", "pyroute2")),
        # keepalived runs nfsyncctl on every transition: typing and shutil (with the
        # compression modules it loads) were ~4 ms of its ~25 ms start-up
        ("status", ("trio", "pyroute2", "typing", "shutil")),
    ],
)
def test_ctl_imports_neither_trio_nor_pyroute2(
    fake: FakeDaemon, command: str, avoided: tuple[str, ...]
) -> None:
    code = (
        "import sys\nfrom nfsyncd import ctl\n"
        f"rc = ctl.main(['--socket', {str(fake.path)!r}, {command!r}])\n"
        f"heavy = [m for m in {avoided!r} if m in sys.modules]\n"
        "print(rc, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("0 []")


@pytest.mark.parametrize(
    ("words", "command"),
    [
        (["status"], "status"),
        (["--json", "--socket", "/run/x.sock", "commit", "ct"], "commit"),
        (["-C", "stats", "dump", "external"], "dump"),  # a config file named like a command
        (["--sock", "notify", "notify", "primary"], "notify"),  # argparse takes prefixes
        (["--timeout=5", "nft", "show"], "nft"),
        (["--", "flush"], "flush"),
        (["--help", "status"], None),  # the full help
        (["-h"], None),
        (["comit"], None),  # the full parser names the valid commands
        ([], None),
    ],
)
def test_only_the_command_being_run_gets_a_parser(words: list[str], command: str | None) -> None:
    assert ctl.command_word(words) == command


@pytest.mark.parametrize(
    "words",
    [
        ["status"],
        ["--json", "stats", "runtime"],
        ["--socket", "/s", "--timeout", "3", "commit", "ct"],
        ["dump", "external", "expect"],
        ["notify", "backup"],
        ["nft", "show", "--json", "-C", "x.toml"],
        ["config", "import", "c.conf"],
        ["check-config", "f.toml"],
    ],
)
def test_a_single_command_parser_parses_as_the_full_one(words: list[str]) -> None:
    command = ctl.command_word(words)
    assert command is not None
    assert vars(ctl._parser(command).parse_args(words)) == vars(ctl._parser().parse_args(words))


def test_every_command_is_listed_once() -> None:
    sub = next(a for a in ctl._parser()._actions if a.dest == "command")
    assert sub.choices is not None
    assert tuple(sub.choices) == ctl.COMMANDS


def test_expect_line_layout() -> None:
    d = {
        "protonum": 6,
        "tuple": {"src": "198.18.0.2", "dst": "198.18.0.1", "sport": 0, "dport": 30001},
        "mask": {"src": "255.255.255.255", "dst": "255.255.255.255", "sport": 0, "dport": 65535},
        "master": {"src": "198.18.0.2", "dst": "198.18.0.1", "sport": 40000, "dport": 21},
        "class": 0,
        "helper": "ftp",
        "active_since": 4.2,
    }
    assert expect_line(d) == (
        "proto=6 src=198.18.0.2 dst=198.18.0.1 sport=0 dport=30001 mask-src=255.255.255.255 "
        "mask-dst=255.255.255.255 sport=0 dport=65535 master-src=198.18.0.2 "
        "master-dst=198.18.0.1 sport=40000 dport=21 class=0 helper=ftp [active since 4s]"
    )


def test_unreplied_flow_line() -> None:
    flow = FLOW._replace(
        status=int(Status.CONFIRMED), reply=None, mark=None, zone=None, helper=None
    )
    assert flow_line(flow_json(flow)) == (
        "tcp      6 ESTABLISHED src=198.18.0.2 dst=198.18.0.1 sport=40000 dport=22 "
        "[UNREPLIED] mark=0"
    )


def test_config_import_then_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The migration path a user takes: import Debian's FTFW example, save it, check it."""
    example = Path("/usr/share/doc/conntrackd/examples/sync/ftfw/conntrackd.conf")
    if not example.exists():
        skip_or_fail("conntrackd's examples are not installed (scripts/install-deps.sh)")
    code, toml, err = run(capsys, "config", "import", str(example))
    assert code == 0 and 'mode = "ftfw"' in toml
    assert "note:" in err  # options with no equivalent are named
    saved = tmp_path / "nfsyncd.toml"
    saved.write_text(toml)
    code, out, _ = run(capsys, "check-config", str(saved))
    assert code == 0 and out.startswith(f"{saved}: configuration is valid (ftfw); nftables: ")
    saved.write_text(toml.replace('mode = "ftfw"', 'mode = "nack"'))
    code, out, err = run(capsys, "--json", "check-config", str(saved))
    assert code == 2
    report = json.loads(out)
    assert report["valid"] is False
    assert 'sync.mode: must be one of "ftfw", "alarm", "notrack", got "nack"' in report["errors"][0]


def test_config_import_reports_the_line_of_a_syntax_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "conntrackd.conf"
    bad.write_text("General {\n  HashSize 8192\n  Nice 5\n}\n")
    code, out, err = run(capsys, "config", "import", str(bad))
    assert code == 2 and out == ""
    assert f"{bad}:3:" in err


def test_daemon_check_config_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[general]\nlog_level = "info"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('[general]\nlog_levl = "info"\n')
    cmd = [sys.executable, "-m", "nfsyncd.daemon", "--check-config"]
    ok = subprocess.run([*cmd, str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and "configuration is valid" in ok.stdout
    ko = subprocess.run([*cmd, str(bad)], capture_output=True, text=True)
    assert ko.returncode == 2
    assert ko.stderr.strip() == (
        f'{bad}:2: general.log_levl: unknown key; did you mean "log_level"?'
    )


def test_json_logs_are_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from nfsyncd.logs import setup_logging

    setup_logging("info", "json")
    try:
        logging.getLogger("nfsyncd.test").warning("hello %s", "world")
        logging.getLogger("nfsyncd.test").debug("not shown at info")
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1
        rec = json.loads(lines[0])
        assert rec["level"] == "warning" and rec["msg"] == "hello world"
        assert rec["logger"] == "nfsyncd.test" and rec["ts"].endswith("Z")
    finally:
        setup_logging("info", "text")


def test_conntrackd_sync_flags_map_to_daemon_commands(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    """primary-backup.sh's calls (-c -f -R -B / -t -n) reach the daemon as commands, print
    nothing (as conntrackd's client) and exit 0."""
    sock = str(fake.path)
    cases = [
        (["-c"], {"cmd": "commit", "what": "all"}),
        (["-c", "exp"], {"cmd": "commit", "what": "expect"}),
        (["-F", "ct"], {"cmd": "flush-kernel", "what": "ct"}),
        (["-B"], {"cmd": "bulk"}),
        (["-n"], {"cmd": "request-resync"}),
        (["-t"], {"cmd": "purge"}),
    ]
    for argv, request in cases:
        code, out, err = run(capsys, "--socket", sock, *argv)
        assert (code, out, err) == (0, "", ""), argv
        assert fake.requests[-1] == request


def test_sync_subcommands_say_what_happened(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = str(fake.path)
    code, out, _ = run(capsys, "--socket", sock, "commit")
    assert code == 0
    assert out == (
        "committed 10 flows (2 related) and 3 expectations in 0.01s; failed: 1 flows, "
        "0 expectations (EEXIST: 1)\n"
    )
    code, out, _ = run(capsys, "--socket", sock, "notify", "primary")
    assert fake.requests[-1] == {"cmd": "notify", "role": "primary"}
    assert out.startswith("now primary (0.05s); committed 10 flows and 3 expectations, 1 failed")
    assert "sending 13 entries to the peer" in out
    code, out, _ = run(capsys, "--socket", sock, "--json", "purge")
    assert json.loads(out) == {"purge_in": 60.0}
