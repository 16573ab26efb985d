"""An in-memory stand-in for libnftables, for tests that have no kernel (or no root).

It understands just the commands ``nft.py`` sends (add/delete table, add object, chain and
rule, list table), keeps tables per name, applies a batch all-or-nothing like the kernel,
and records every batch so a test can assert there was exactly one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .nft import NftError

__all__ = ["FakeBackend"]

JsonDict = dict[str, Any]


@dataclass
class FakeBackend:
    """``fail(command) -> message | None``: refuse a batch that holds such a command."""

    fail: Callable[[JsonDict], str | None] | None = None
    tables: dict[str, list[JsonDict]] = field(default_factory=dict)
    batches: list[tuple[list[JsonDict], bool]] = field(default_factory=list)
    """Every batch run: (commands, dry_run)."""

    @property
    def applied(self) -> list[list[JsonDict]]:
        """The batches that could change something: no dry runs, no listings."""
        return [
            commands
            for commands, dry in self.batches
            if not dry and not all("list" in command for command in commands)
        ]

    def run(self, commands: list[JsonDict], *, dry_run: bool = False) -> list[JsonDict]:
        self.batches.append((copy.deepcopy(commands), dry_run))
        tables = copy.deepcopy(self.tables)
        output: list[JsonDict] = []
        for command in commands:
            if self.fail is not None and (message := self.fail(command)) is not None:
                raise NftError(f"Error: Could not process rule: {message}")
            ((verb, body),) = command.items()
            ((kind, obj),) = body.items()
            name = obj["name"] if kind == "table" else obj["table"]
            if verb == "list":
                if name not in tables:
                    raise NftError("Error: No such file or directory")
                output += [{"table": {"family": "inet", "name": name}}, *tables[name]]
            elif verb == "add" and kind == "table":
                tables.setdefault(name, [])
            elif verb == "delete" and kind == "table":
                if name not in tables:
                    raise NftError("Error: Could not process rule: No such file or directory")
                del tables[name]
            elif verb == "add":
                if name not in tables:
                    raise NftError("Error: Could not process rule: No such file or directory")
                tables[name].append({kind: obj})
            else:
                raise NftError(f"Error: the fake backend does not know {verb} {kind}")
        if not dry_run:
            self.tables = tables
        return output
