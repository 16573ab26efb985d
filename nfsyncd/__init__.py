"""nfsyncd: conntrack table synchronisation for gateway pairs."""

__version__ = "0.1.0"
