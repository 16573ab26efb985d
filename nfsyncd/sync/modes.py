"""The sync modes' public surface: :func:`make_mode` picks the state machine that
``SyncConfig.mode`` names."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from ._mode import ALIVE_INTERVAL, Lookup, SyncMode, object_key
from .alarm import AlarmMode
from .ftfw import FtfwMode
from .notrack import NotrackMode
from .wire import Encoder, NetworkStats, SeqCounter

if TYPE_CHECKING:
    from .._config_types import SyncConfig

__all__ = [
    "ALIVE_INTERVAL",
    "MODES",
    "AlarmMode",
    "FtfwMode",
    "NotrackMode",
    "SyncMode",
    "make_mode",
    "object_key",
]

MODES: Final[dict[str, type[SyncMode]]] = {
    "ftfw": FtfwMode,
    "alarm": AlarmMode,
    "notrack": NotrackMode,
}


def make_mode(
    config: SyncConfig,
    encoder: Encoder,
    *,
    clock: Callable[[], float],
    seq: SeqCounter | None = None,
    network: NetworkStats | None = None,
    rng: random.Random | None = None,
    lookup: Lookup | None = None,
) -> SyncMode:
    try:
        cls = MODES[config.mode.lower()]
    except KeyError:
        raise ValueError(f"unknown sync mode {config.mode!r} (ftfw, alarm or notrack)") from None
    return cls(config, encoder, clock=clock, seq=seq, network=network, rng=rng, lookup=lookup)
