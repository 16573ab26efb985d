"""Entry point of the ``nfsyncd`` daemon (placeholder until the sync daemon lands)."""

from __future__ import annotations

import argparse
import sys

from nfsyncd import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nfsyncd", description="Conntrack table synchronisation daemon."
    )
    parser.add_argument("--version", action="version", version=f"nfsyncd {__version__}")
    parser.parse_args(argv)
    print("nfsyncd: the sync daemon is not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
