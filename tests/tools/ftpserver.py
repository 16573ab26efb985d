"""A real FTP server (pyftpdlib) for expectation tests: anonymous, read/write, one directory.

Run inside a lab namespace:

    python tests/tools/ftpserver.py --address 198.18.0.1 --port 2121 --root DIR

It prints ``READY <address> <port>`` on stdout once the listening socket is bound (connects
succeed from then on), then serves until SIGTERM. Passive data connections use the fixed
port range nfsyncd.lab.failover_traffic.FTP_PASSIVE_PORTS. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from pyftpdlib.servers import FTPServer

from nfsyncd.lab.failover_traffic import FTP_PASSIVE_PORTS, ftp_handler

PASSIVE_PORTS = FTP_PASSIVE_PORTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, default=2121)
    parser.add_argument("--root", required=True)
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    server = FTPServer((args.address, args.port), ftp_handler(args.root, timeout=60))

    def stop(signum: int, frame: object) -> None:
        server.close_all()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    print(f"READY {args.address} {args.port}", flush=True)
    server.serve_forever(handle_exit=False)


if __name__ == "__main__":
    main()
