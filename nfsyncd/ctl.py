"""``nfsyncctl``: talk to a running nfsyncd over its control socket.

It imports neither trio nor pyroute2 (together ~300 ms of start-up), because keepalived
and scripts call it on every state change.  Besides its own subcommands it understands
conntrackd's client flags (``-i -e -s -f -R -k``) with the same meaning and exit codes, so a
``primary-backup.sh`` written for conntrackd keeps working when pointed at nfsyncctl.

Exit status: 0 done; 1 the daemon is unreachable or reported an error; 2 a usage or
configuration error.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys

from . import __version__

# typing stays out of the start-up (~2 ms of nfsyncctl's ~20): mypy knows this name
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, NoReturn

    from .nft import Table

    JsonDict = dict[str, Any]

__all__ = ["main"]

DEFAULT_CONFIG = "/etc/nfsyncd/nfsyncd.toml"
DEFAULT_SOCKET = "/run/nfsyncd/control.sock"

EXIT_OK, EXIT_DAEMON, EXIT_USAGE = 0, 1, 2

#: conntrackd's client flags that take an optional, prefix-matched argument
_COMPAT_ARGS = {
    "-i": ("ct", "expect"),
    "-e": ("ct", "expect"),
    "-s": (
        "ct",
        "network",
        "cache",
        "runtime",
        "link",
        "rsqueue",
        "process",
        "queue",
        "expect",
        "multicast",
    ),
    "-f": ("internal", "external"),
    "-R": ("ct", "expect"),
    "-k": (),
    "-c": ("ct", "expect"),
    "-F": ("ct", "expect"),
    "-B": (),
    "-n": (),
    "-t": (),
}
#: ``-s`` sections the daemon has no counters for (conntrackd prints nothing for those)
_EMPTY_SECTIONS = {"process", "expect"}
#: conntrackd ``-s`` names -> the daemon's stats sections
_SECTION_ALIASES = {"multicast": "link", "rsqueue": "queue"}


class CtlError(Exception):
    def __init__(self, message: str, code: int = EXIT_DAEMON) -> None:
        super().__init__(message)
        self.code = code


# -- the daemon connection -------------------------------------------------------------------
class Client:
    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout

    def request(self, cmd: str, **args: Any) -> Iterator[JsonDict]:
        """Yield the reply's items, then the final ``ok`` object; raise on ``error``."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            hint = (
                "is nfsyncd running? (systemctl status nfsyncd) Does nfsyncctl use the daemon's "
                "config (-C FILE) or socket (--socket PATH)?"
            )
            if isinstance(exc, PermissionError):
                hint = "the control socket is 0600: run nfsyncctl as the daemon's user (root)"
            raise CtlError(
                f"cannot connect to {self.path}: {exc.strerror or exc}; {hint}"
            ) from None
        with sock, sock.makefile("rb") as reader:
            sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            for raw in reader:
                msg = json.loads(raw)
                if "item" in msg:
                    yield msg["item"]
                    continue
                if not msg.get("ok"):
                    raise CtlError(f"nfsyncd: {msg.get('error', 'request failed')}")
                yield msg
                return
        raise CtlError("nfsyncd closed the connection without answering; see its log")

    def call(self, cmd: str, **args: Any) -> JsonDict:
        *_, last = self.request(cmd, **args)
        return last


def socket_path(args: argparse.Namespace) -> str:
    """--socket, else the config's control_socket (-C FILE or the default file), else default."""
    if args.socket:
        return str(args.socket)
    path = args.config or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    if path is None:
        return DEFAULT_SOCKET
    from .config import ConfigError, load_config

    try:
        return load_config(path).general.control_socket
    except ConfigError as exc:
        raise CtlError(
            f"{exc}\n(fix the config, or give the socket with --socket PATH)", EXIT_USAGE
        ) from None
    except OSError as exc:
        raise CtlError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from None


# -- output ------------------------------------------------------------------------------------
def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


def _fmt_status(st: JsonDict) -> str:
    lines = [
        f"nfsyncd {st['version']} (pid {st['pid']}), up {_duration(st['uptime'])}",
        f"  config:          {st.get('config') or '<built-in defaults>'}",
        f"  mode:            {st['mode']}",
        f"  state:           {'ready' if st['ready'] else 'starting (initial dump in progress)'}",
        f"  kernel source:   {st['source']}",
        f"  internal cache:  {st['flows']} flows, {st['expectations']} expectations",
        f"  overruns:        {st['overruns']}, resyncs: {st['resyncs']}",
        f"  control socket:  {st['control_socket']}",
        f"  metrics:         {st.get('metrics') or 'disabled'}",
    ]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h}h {m}m {s}s"


def _fmt_cache_summary(name: str, c: JsonDict) -> str:
    return (
        f"cache {name}:\n"
        f"current active connections:\t{c['active']:12}\n"
        f"connections created:\t\t{c['created']:12}\tfailed:\t{c['create_failed']:12}\n"
        f"connections updated:\t\t{c['updated']:12}\tfailed:\t{c['update_failed']:12}\n"
        f"connections destroyed:\t\t{c['deleted']:12}\tfailed:\t{c['delete_failed']:12}\n\n"
    )


def _fmt_cache_detail(name: str, c: JsonDict) -> str:
    return (
        f"cache:{name}\tactive objects:\t\t{c['active']:12}\n"
        f"\tcreation OK/failed:\t\t{c['created']:12}/{c['create_failed']:12}\n"
        f"\t\tno space left in cache:\t{c['no_space']:12}\n"
        f"\tupdate OK/failed:\t\t{c['updated']:12}/{c['update_failed']:12}\n"
        f"\t\tentry not found:\t{c['update_not_found']:12}\n"
        f"\tdeletion created/failed:\t{c['deleted']:12}/{c['delete_failed']:12}\n"
        f"\t\tentry not found:\t{c['delete_not_found']:12}\n"
        f"\tfiltered out:\t\t\t{c['filtered']:12}\n\n"
    )


def _fmt_runtime(r: JsonDict) -> str:
    return (
        f"daemon uptime: {_duration(r['uptime'])}\n\n"
        "netlink stats:\n"
        f"\tevents received:\t{r['events_received']:20}\n"
        f"\tevents filtered:\t{r['events_filtered']:20}\n"
        f"\tmalformed messages:\t{r['decode_errors']:20}\n"
        f"\tnetlink overrun:\t\t{r['netlink_overrun']:12}\n"
        f"\tresync with kernel table:\t{r['resync_with_kernel_table']:12}\n"
        f"\tresync failures:\t\t{r['resync_failures']:12}\n"
        f"\tcurrent buffer size (in bytes):\t{r['buffer_size']:12}\n"
        f"\tbuffer grown before overrun:\t{r.get('buffer_grows', 0):12}\n\n"
    )


def _fmt_stats(stats: JsonDict, section: str | None) -> str:
    out = ""
    caches = stats.get("cache", {})
    if section in (None, "ct"):
        for name, c in caches.items():
            out += _fmt_cache_summary(name, c)
        return out
    if section == "cache":
        for name, c in caches.items():
            out += _fmt_cache_detail(name, c)
    if section == "runtime" and "runtime" in stats:
        out += _fmt_runtime(stats["runtime"])
    if section in _SYNC_SECTIONS and section in stats:
        out += _fmt_sync_section(section, stats[section])
    if section == "control" and "control" in stats:
        c = stats["control"]
        out += "control socket:\n"
        out += f"\tconnections:\t{c['connections']:12}\n\terrors:\t\t{c['errors']:12}\n"
        for name, n in sorted(c["requests"].items()):
            out += f"\t{name + ':':<16}{n:12}\n"
    return out


_SYNC_SECTIONS = {"network", "link", "queue", "sync"}


def _flat(data: JsonDict) -> Iterator[tuple[str, Any]]:
    """Nested counters as one level (``stats.sent_packets`` reads as ``sent_packets``)."""
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flat(value)
        else:
            yield key, value


def _fmt_sync_section(section: str, data: Any) -> str:
    """Peer-sync counters as aligned ``name: value`` lines (links: one block per link)."""
    if section == "link":
        out = ""
        for link in data:
            out += (
                f"{link.get('transport', 'link')} traffic device={link['interface']} "
                f"status={link['status']} role={link['role']}:\n"
            )
            for key, value in _flat(link):
                if key not in ("interface", "status", "role", "transport", "index"):
                    out += f"\t{key + ':':<24}{value!s:>14}\n"
        return out + "\n"
    out = f"{section}:\n"
    for key, value in data.items():
        out += f"\t{key + ':':<28}{value!s:>14}\n"
    return out + "\n"


# -- commands ----------------------------------------------------------------------------------
def cmd_status(client: Client, args: argparse.Namespace) -> int:
    st = client.call("status")
    st.pop("ok", None)
    _print_json(st) if args.json else print(_fmt_status(st))
    return EXIT_OK


def cmd_stats(client: Client, args: argparse.Namespace) -> int:
    section = _SECTION_ALIASES.get(args.section, args.section)
    daemon_section = None if section in (None, "ct") or section in _EMPTY_SECTIONS else section
    if section in _SYNC_SECTIONS and not client.call("status").get("sync"):
        stats: JsonDict = {}  # no peer sync: conntrackd prints nothing for these sections
    else:
        stats = client.call("stats", section=daemon_section)["stats"]
    if section in _EMPTY_SECTIONS:
        stats = {}
    if args.json:
        _print_json(stats)
    else:
        sys.stdout.write(_fmt_stats(stats, section))
    return EXIT_OK


def cmd_dump(client: Client, args: argparse.Namespace) -> int:
    from .render import expect_line, flow_line

    line = flow_line if args.what == "ct" else expect_line
    first = True
    if args.json:
        sys.stdout.write("[")
    for item in client.request("dump", cache=args.cache, what=args.what):
        if "ok" in item and "count" in item:
            break
        if args.json:
            sys.stdout.write(("\n  " if first else ",\n  ") + json.dumps(item))
        else:
            sys.stdout.write(line(item) + "\n")
        first = False
    if args.json:
        sys.stdout.write("\n]\n" if not first else "]\n")
    return EXIT_OK


def cmd_flush(client: Client, args: argparse.Namespace) -> int:
    res = client.call("flush", cache=args.cache)
    if args.json:
        _print_json({"flushed": res["flushed"]})
    elif not args.compat:
        print(f"flushed {res['flushed']} entries from the {args.cache} cache")
    return EXIT_OK


def cmd_resync(client: Client, args: argparse.Namespace) -> int:
    res = client.call("resync", what=args.what)["resync"]
    if args.json:
        _print_json(res)
    elif not args.compat:
        print(
            f"resynced with the kernel in {res['seconds']}s: {res['flows']} flows, "
            f"{res['expects']} expectations; {res['added']} added, {res['updated']} updated, "
            f"{res['removed']} removed"
        )
    return EXIT_OK


def cmd_commit(client: Client, args: argparse.Namespace) -> int:
    res = client.call("commit", what=args.what)["commit"]
    if args.json:
        _print_json(res)
    elif res is None:
        if not args.compat:
            print("nothing to commit: received state goes straight into the kernel (inject mode)")
    elif not args.compat:
        print(
            f"committed {res['flows']} flows ({res['related']} related) and {res['expects']} "
            f"expectations in {res['seconds']}s; failed: {res['flows_failed']} flows, "
            f"{res['expects_failed']} expectations"
            + (f" ({_errors(res['errors'])})" if res.get("errors") else "")
        )
    return EXIT_OK


def _errors(errors: JsonDict) -> str:
    return ", ".join(f"{name}: {n}" for name, n in sorted(errors.items()))


def cmd_flush_kernel(client: Client, args: argparse.Namespace) -> int:
    res = client.call("flush-kernel", what=args.what)
    res.pop("ok", None)
    if args.json:
        _print_json(res)
    elif not args.compat:
        print(
            f"deleted {res['flows']} flows and {res['expects']} expectations from the kernel "
            "(not replicated)"
        )
    return EXIT_OK


def cmd_bulk(client: Client, args: argparse.Namespace) -> int:
    res = client.call("bulk")
    if args.json:
        _print_json({"queued": res["queued"]})
    elif not args.compat:
        print(f"queued {res['queued']} flows and expectations for the peer")
    return EXIT_OK


def cmd_request_resync(client: Client, args: argparse.Namespace) -> int:
    requested = bool(client.call("request-resync").get("requested", True))
    if args.json:
        _print_json({"requested": requested})
    elif not args.compat:
        print(
            "asked the peer for a full resync"
            if requested
            else "nothing to do: the alarm mode has no resync request (the peer refreshes "
            "every flow within sync.refresh_time)"
        )
    return EXIT_OK


def cmd_purge(client: Client, args: argparse.Namespace) -> int:
    res = client.call("purge")
    if args.json:
        _print_json({"purge_in": res["purge_in"]})
    elif not args.compat:
        print(
            f"the kernel table will be purged in {res['purge_in']:g}s (cancelled by commit/flush)"
        )
    return EXIT_OK


def cmd_notify(client: Client, args: argparse.Namespace) -> int:
    res = client.call("notify", role=args.role)["transition"]
    if args.json:
        _print_json(res)
        return EXIT_OK
    parts = [f"now {res['role']} ({res['seconds']}s)"]
    commit = res.get("commit")
    if commit:
        parts.append(
            f"committed {commit['flows']} flows and {commit['expects']} expectations"
            + (
                f", {commit['flows_failed'] + commit['expects_failed']} failed"
                if commit["flows_failed"] or commit["expects_failed"]
                else ""
            )
        )
    if res.get("bulk"):
        parts.append(f"sending {res['bulk']} entries to the peer")
    if res.get("purge_in") is not None:
        parts.append(f"kernel purge in {res['purge_in']:g}s")
    if res.get("resync_requested"):
        parts.append("asked the peer for its table")
    print("; ".join(parts))
    return EXIT_OK


def cmd_reload(client: Client, args: argparse.Namespace) -> int:
    client.call("reload")
    if not args.json:
        print("configuration reloaded (see the daemon's log for changes that need a restart)")
    return EXIT_OK


def cmd_shutdown(client: Client, args: argparse.Namespace) -> int:
    client.call("shutdown")
    if not args.json and not args.compat:
        print("nfsyncd is shutting down")
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config

    path = args.file or args.config or DEFAULT_CONFIG
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        if args.json:
            _print_json({"file": path, "valid": False, "errors": [str(e) for e in exc.errors]})
        else:
            print(exc, file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        raise CtlError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from None
    from .nft import kernel_check

    ok, message = kernel_check(cfg)
    mode = cfg.sync.mode if cfg.sync else "no peer sync"
    if args.json:
        _print_json(
            {
                "file": path,
                "valid": ok is not False,
                "mode": mode,
                "nftables": {"checked": ok is not None, "ok": ok, "message": message},
            }
        )
    elif ok is False:
        print(f"{path}: {message}", file=sys.stderr)
    else:
        print(f"{path}: configuration is valid ({mode}); nftables: {message}")
    return EXIT_USAGE if ok is False else EXIT_OK


def _nft_config(args: argparse.Namespace) -> Any:
    """The config ``nft show|check`` works on: -C FILE, else the default file, else defaults."""
    from .config import ConfigError, default_config, load_config

    path = args.config or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    if path is None:
        return default_config()
    try:
        return load_config(path)
    except ConfigError as exc:
        raise CtlError(str(exc), EXIT_USAGE) from None
    except OSError as exc:
        raise CtlError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from None


def _nft_table(args: argparse.Namespace, disabled: str) -> Table | None:
    """The table ``nft show|check`` works on, or None once it printed ``disabled`` (with the
    config's ``{source}``) because the config turns nftables off."""
    from .nft import build_table

    config = _nft_config(args)
    if not config.nftables.enabled:
        print(disabled.format(source=config.source))
        return None
    return build_table(config)


def cmd_nft_show(args: argparse.Namespace) -> int:
    from .nft import render_json, render_text

    table = _nft_table(args, "# nftables.enabled = false in {source}: nfsyncd makes no table")
    if table is None:
        return EXIT_OK
    if args.json:
        _print_json(render_json(table))
    else:
        sys.stdout.write(render_text(table))
    return EXIT_OK


def cmd_nft_check(args: argparse.Namespace) -> int:
    from .nft import NftBackend, NftError, check, has_net_admin

    table = _nft_table(args, "nftables.enabled = false in {source}: no table to check")
    if table is None:
        return EXIT_OK
    try:
        check(table, NftBackend())
    except NftError as exc:
        hint = ""
        if "Operation not permitted" in exc.message and not has_net_admin():
            hint = " (the dry run needs CAP_NET_ADMIN: run it as root)"
        raise CtlError(f"the kernel refuses table inet {table.name}: {exc}{hint}") from None
    if args.json:
        _print_json({"table": table.name, "ok": True, "rules": table.rule_count})
    else:
        print(f"table inet {table.name}: the kernel accepts it ({table.rule_count} rules)")
    return EXIT_OK


def cmd_config_import(args: argparse.Namespace) -> int:
    from .conntrackd_conf import ConntrackdConfError, import_conntrackd_conf

    try:
        with open(args.file, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise CtlError(f"cannot read {args.file}: {exc.strerror}", EXIT_USAGE) from None
    try:
        result = import_conntrackd_conf(text, args.file)
    except ConntrackdConfError as exc:
        raise CtlError(str(exc), EXIT_USAGE) from None
    if args.json:
        _print_json({"toml": result.toml, "notes": result.notes})
        return EXIT_OK
    sys.stdout.write(result.toml)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    return EXIT_OK


# -- argument parsing --------------------------------------------------------------------------
#: every subcommand, in the order ``--help`` lists them
COMMANDS: tuple[str, ...] = (
    "status", "stats", "dump", "flush", "resync", "commit", "flush-kernel", "bulk",
    "request-resync", "purge", "notify", "reload", "shutdown", "check-config", "nft", "config",
)  # fmt: skip
#: the global options that take a value in the next word
_VALUE_OPTIONS = ("-C", "--config", "--socket", "--timeout")


def _help_width() -> int:
    """The width argparse would take from ``shutil.get_terminal_size``, without importing
    shutil (and the compression modules it loads, ~2 ms of every nfsyncctl call)."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 80
    return columns - 2


class _Formatter(argparse.HelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_help_width())


class _RawFormatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_help_width())


class _Subcommands:
    """The subcommand parsers, built only for the command this invocation runs.

    An argparse parser costs ~0.4 ms to build (gettext lookups, a help formatter per
    argument): building all of them was a third of nfsyncctl's start-up, which keepalived
    pays on every transition.  ``wanted=None`` builds them all (``--help``, and the error
    that lists the commands)."""

    def __init__(self, action: Any, wanted: str | None) -> None:
        self._action = action
        self._wanted = wanted

    def add(self, name: str, **kwargs: Any) -> argparse.ArgumentParser | None:
        assert name in COMMANDS, f"{name} missing from COMMANDS"
        if self._wanted is not None and name != self._wanted:
            return None
        kwargs.setdefault("formatter_class", _Formatter)
        parser: argparse.ArgumentParser = self._action.add_parser(name, **kwargs)
        return parser


def command_word(words: list[str]) -> str | None:
    """The subcommand ``words`` run, when it can be told without parsing them; None when
    the full parser is needed (no command, help or an unknown word before it)."""
    i = 0
    while i < len(words):
        word = words[i]
        if word in ("-h", "--help"):
            return None
        if word == "--":
            return words[i + 1] if i + 1 < len(words) and words[i + 1] in COMMANDS else None
        if word.startswith("-"):
            # argparse accepts any unambiguous prefix of a long option
            long = word.startswith("--") and "=" not in word
            takes = word == "-C" or (long and any(o.startswith(word) for o in _VALUE_OPTIONS))
            i += 2 if takes else 1
            continue
        return word if word in COMMANDS else None
    return None


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """nfsyncctl's parser, with only ``command``'s subparser when one is given."""
    p = argparse.ArgumentParser(
        prog="nfsyncctl",
        description="Control a running nfsyncd through its control socket.",
        formatter_class=_RawFormatter,
        epilog="""\
conntrackd-compatible flags (same meaning and exit codes as conntrackd's client):
  -i [ct|expect]     dump the internal cache      (= dump internal ct|expect)
  -e [ct|expect]     dump the external cache      (= dump external ct|expect)
  -s [SECTION]       statistics (ct, cache, runtime, ...)
  -f [internal|external]  flush the caches
  -R [ct|expect]     resync the internal cache with the kernel table
  -c [ct|expect]     commit the external cache to the kernel
  -F [ct|expect]     flush the kernel table (selectively: what the filter syncs)
  -B                 send every internal-cache entry to the peer
  -n                 ask the peer for a full resync
  -t                 purge the kernel table after sync.purge_timeout
  -k                 stop the daemon
Arguments are prefix-matched as conntrackd does (-s run = -s runtime).

exit status: 0 done; 1 the daemon is unreachable or reported an error;
             2 usage or configuration error.
The socket is found through -C FILE (its general.control_socket), else
/etc/nfsyncd/nfsyncd.toml if it exists, else /run/nfsyncd/control.sock.""",
    )
    p.add_argument("-C", "--config", metavar="FILE", help="the daemon's configuration file")
    p.add_argument("--socket", metavar="PATH", help="control socket path (overrides -C)")
    p.add_argument("--json", action="store_true", help="machine-readable JSON output")
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="give up on an unresponsive daemon after S seconds (default 60)",
    )
    p.add_argument("--version", action="version", version=f"nfsyncctl {__version__}")
    p.set_defaults(compat=False)
    sub = _Subcommands(p.add_subparsers(dest="command", metavar="COMMAND"), command)

    if s := sub.add("status", help="daemon state, cache sizes and where it listens"):
        s.set_defaults(func=cmd_status)
    if s := sub.add(
        "stats",
        help="counters; SECTION: cache, runtime, control, network, link, queue or sync "
        "(default: summary)",
    ):
        s.add_argument(
            "section",
            nargs="?",
            choices=("cache", "runtime", "control", "network", "link", "queue", "sync"),
        )
        s.set_defaults(func=cmd_stats)
    if s := sub.add("dump", help="list a cache's entries (one conntrackd -i style line each)"):
        s.add_argument("cache", choices=("internal", "external"))
        s.add_argument("what", nargs="?", choices=("ct", "expect"), default="ct")
        s.set_defaults(func=cmd_dump)
    if s := sub.add("flush", help="empty the caches (not the kernel table)"):
        s.add_argument("cache", nargs="?", choices=("internal", "external", "all"), default="all")
        s.set_defaults(func=cmd_flush)
    if s := sub.add("resync", help="re-dump the kernel table into the internal cache"):
        s.add_argument("what", nargs="?", choices=("ct", "expect", "all"), default="all")
        s.set_defaults(func=cmd_resync)
    if s := sub.add(
        "commit",
        help="write the peer's state (external cache) into the kernel: masters, related "
        "flows, then expectations",
    ):
        s.add_argument("what", nargs="?", choices=("ct", "expect", "all"), default="all")
        s.set_defaults(func=cmd_commit)
    if s := sub.add(
        "flush-kernel",
        help="delete the kernel's flows the filter syncs (and expectations); not replicated",
    ):
        s.add_argument("what", nargs="?", choices=("ct", "expect", "all"), default="all")
        s.set_defaults(func=cmd_flush_kernel)
    if s := sub.add("bulk", help="send every internal-cache entry to the peer"):
        s.set_defaults(func=cmd_bulk)
    if s := sub.add("request-resync", help="ask the peer to send its whole table"):
        s.set_defaults(func=cmd_request_resync)
    if s := sub.add(
        "purge", help="flush the kernel table after sync.purge_timeout (zombies of a primary)"
    ):
        s.set_defaults(func=cmd_purge)
    if s := sub.add(
        "notify",
        help="keepalived state change: primary (commit, then bulk-send to the new backup), "
        "backup (purge later, request a resync) or fault (purge later)",
        description="Perform a keepalived transition inside the daemon and return when the "
        "new state is in the kernel. Use it as keepalived's notify_master/notify_backup/"
        "notify_fault: nfsyncctl notify primary|backup|fault.",
    ):
        s.add_argument("role", choices=("primary", "backup", "fault"))
        s.set_defaults(func=cmd_notify)
    if s := sub.add("reload", help="re-read the configuration file (like SIGHUP)"):
        s.set_defaults(func=cmd_reload)
    if s := sub.add("shutdown", help="stop the daemon cleanly (like SIGTERM)"):
        s.set_defaults(func=cmd_shutdown)
    if s := sub.add("check-config", help="validate a configuration file without a daemon"):
        s.add_argument(
            "file", nargs="?", metavar="FILE", help="default: the -C file or " + DEFAULT_CONFIG
        )
        s.set_defaults(func=cmd_check_config, local=True)
    _nft_parser(sub)
    if s := sub.add("config", help="configuration tools"):
        csub = s.add_subparsers(dest="config_command", metavar="ACTION", required=True)
        c = csub.add_parser(
            "import",
            formatter_class=_Formatter,
            help="convert a conntrackd.conf to nfsyncd TOML (stdout); notes go to stderr",
        )
        c.add_argument("file", metavar="CONNTRACKD_CONF")
        c.set_defaults(func=cmd_config_import, local=True)
    return p


def _nft_parser(sub: _Subcommands) -> None:
    s = sub.add(
        "nft",
        help="show or dry-run the nftables table nfsyncd generates (no daemon needed)",
        formatter_class=_RawFormatter,
        description="""\
nfsyncd owns one nftables table (table inet NAME, nftables.table in the config,
default "nfsyncd"), which it applies at start, replaces atomically on SIGHUP and
removes on a clean exit. It never touches any other table. The table holds:
  - ct helper objects and the rules assigning them ([[helpers.assign]]),
    in chains helpers_prerouting / helpers_output (priority filter);
  - ct event set rules limiting the events the kernel generates
    (nftables.events; with filter.kernel_side also mask 0 for flows the
    userspace filter ignores), in chains events_prerouting / events_output;
  - notrack rules for the sync links' own packets (nftables.notrack_sync),
    in chains notrack_prerouting / notrack_output (priority raw).
Every rule's comment names the config entry that produced it
("helpers.assign[0]", "sync.links[1]", "filter.address", "nftables.events").""",
        epilog="""\
examples:
  nfsyncctl -C /etc/nfsyncd/nfsyncd.toml nft show
  nfsyncctl nft show --json | nft -j -c -f -     (libnftables JSON batch)
  nfsyncctl nft check -C test.toml

exit status: show: 0, or 2 on a config error.
             check: 0 the kernel accepts the table; 1 it refuses it (the
             message names the failing rule when it can be told); 2 config error.""",
    )
    if s is None:
        return
    nsub = s.add_subparsers(dest="nft_command", metavar="ACTION", required=True)
    for name, func, text in (
        (
            "show",
            cmd_nft_show,
            "print the generated table in nft syntax (--json: the libnftables JSON batch "
            "that replaces it atomically, as the daemon applies it)",
        ),
        (
            "check",
            cmd_nft_check,
            "dry-run the generated table against the running kernel (needs CAP_NET_ADMIN; "
            "nothing is changed)",
        ),
    ):
        c = nsub.add_parser(
            name,
            help=text,
            description=text[0].upper() + text[1:] + ".",
            formatter_class=_Formatter,
        )
        # also accepted after the action; SUPPRESS keeps a value given before it
        c.add_argument(
            "-C", "--config", metavar="FILE", default=argparse.SUPPRESS, help="config file"
        )
        c.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON output")
        c.set_defaults(func=func, local=True)


def _usage_error(message: str) -> NoReturn:
    _parser().error(message)  # prints usage and exits 2


def _translate_compat(argv: list[str]) -> list[str]:
    """Turn conntrackd client flags into subcommands; the last command wins, as in conntrackd."""
    out: list[str] = []
    command: list[str] | None = None
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "-x":
            _usage_error("-x (XML output) is not supported; use --json")
        if word not in _COMPAT_ARGS:
            out.append(word)
            i += 1
            continue
        choices = _COMPAT_ARGS[word]
        arg = None
        if choices and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            given = argv[i + 1]
            matches = [c for c in choices if c.startswith(given)]
            if not matches:
                _usage_error(f"{word} {given}: expected one of {', '.join(choices)}")
            arg = matches[0]
            i += 1
        i += 1
        if word == "-s" and arg == "multicast":
            print("nfsyncctl: -s multicast is an old alias; use -s link", file=sys.stderr)
        command = {
            "-i": ["dump", "internal", arg or "ct"],
            "-e": ["dump", "external", arg or "ct"],
            "-s": ["stats", *([arg] if arg else [])],
            "-f": ["flush", arg or "all"],
            "-R": ["resync", arg or "all"],
            "-k": ["shutdown"],
            "-c": ["commit", arg or "all"],
            "-F": ["flush-kernel", arg or "all"],
            "-B": ["bulk"],
            "-n": ["request-resync"],
            "-t": ["purge"],
        }[word]
    if command is None:
        return argv
    return [*out, "--compat-mode", *command]


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    words = _translate_compat(raw)
    compat = "--compat-mode" in words
    if compat:
        words.remove("--compat-mode")
    parser = _parser(command_word(words))
    if compat and "stats" in words:
        # conntrackd's -s accepts sections nfsyncctl's stats subcommand does not list
        idx = words.index("stats")
        if idx + 1 < len(words):
            section = words[idx + 1]
            del words[idx + 1]
            args = parser.parse_args(words)
            args.section = section
            args.compat = True
            return _run(args)
    args = parser.parse_args(words)
    args.compat = compat
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "local", False):
            return int(args.func(args))
        client = Client(socket_path(args), args.timeout)
        return int(args.func(client, args))
    except CtlError as exc:
        print(f"nfsyncctl: {exc}", file=sys.stderr)
        return exc.code
    except TimeoutError:
        print(
            f"nfsyncctl: no answer within {args.timeout:g}s; the daemon may be stuck "
            "(check its log, or raise --timeout)",
            file=sys.stderr,
        )
        return EXIT_DAEMON
    except BrokenPipeError:
        return EXIT_OK  # stdout closed early (| head): not an error


if __name__ == "__main__":
    sys.exit(main())
