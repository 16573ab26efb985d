"""Entry point of ``nfsyncctl`` (placeholder). Must import neither trio nor pyroute2."""

from __future__ import annotations

import argparse
import sys

from nfsyncd import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nfsyncctl", description="Control a running nfsyncd.")
    parser.add_argument("--version", action="version", version=f"nfsyncctl {__version__}")
    parser.parse_args(argv)
    print("nfsyncctl: control commands are not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
