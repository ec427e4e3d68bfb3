"""Everything `p2psync run` was told, validated, in one frozen value."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class NodeConfig:
    data_dir: Path
    profile: str | None = None  # None when --data-dir was given
    data_root: Path | None = None  # where profiles live; used for same-host discovery
    host: str = "0.0.0.0"
    port: int = 0
    peers: tuple[str, ...] = ()  # static peer multiaddrs
    mdns: bool = True
    network: str = "default"
    api_port: int | None = None
    api_host: str = "127.0.0.1"
    metrics_port: int | None = None
    batch_size: int = 1000  # ~280 KB messages: few commits, well under 1 MiB
    sync_interval: float = 30.0
    initial_ops: int = 0
    op_interval: float | None = None
    ops_per_interval: int = 1
    seed: int | None = None
    api_token: str | None = None
    allow_peers: frozenset[str] = field(default_factory=frozenset)
    max_store_mb: float | None = None  # MiB; past it, other origins' entries are refused
    relays: tuple[str, ...] = ()  # --relay multiaddrs: reserve there, meet the network there
    hole_punch: bool = False  # DCUtR on relayed connections (see docs/OPERATIONS.md)
    new_origins_per_hour: int = 1000  # per peer; 0: no limit (budgets.NEW_ORIGINS)
    repl: bool = True
    log_level: str = "WARNING"

    @property
    def max_store_bytes(self) -> int | None:
        """--max-store-mb in bytes (1 MiB = 1048576 bytes), None when there is no limit."""
        if self.max_store_mb is None:
            return None
        return int(self.max_store_mb * (1 << 20))
