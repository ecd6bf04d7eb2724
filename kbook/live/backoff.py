"""When to reconnect: at once a few times, then exponential backoff with jitter, up to a cap.

Kraken's edge bans an IP for ten minutes after about 150 connection attempts in ten minutes, and
asks for no more than one attempt every 5 s after maintenance or a longer outage
(``shared/kraken/README.md`` section 4). A random drop is usually over at once, so the first few
retries are immediate; after that each delay doubles from ``base_ns`` up to ``cap_ns``, with upward
jitter so that many recorders restarted together do not reconnect in step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kbook.units import SECOND

if TYPE_CHECKING:
    from kbook.live.config import LiveConfig


@dataclass
class Backoff:
    """Counts consecutive unhealthy attempts and says how long to wait before the next one."""

    immediate: int = 3
    """Retries made at once after a drop, before backing off."""
    base_ns: int = 5 * SECOND
    cap_ns: int = 60 * SECOND
    maintenance_ns: int = 5 * SECOND
    """Least delay while Kraken reports maintenance (systemStatus not ``online``)."""
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0
    """Attempts since the last healthy connection."""

    @classmethod
    def for_config(cls, config: LiveConfig) -> Backoff:
        """The backoff a recording (or a watch) is configured with."""
        return cls(
            immediate=config.immediate_retries,
            base_ns=config.backoff_base_ns,
            cap_ns=config.backoff_cap_ns,
            maintenance_ns=config.maintenance_delay_ns,
        )

    def next_delay_ns(self, maintenance: bool = False) -> int:
        """Count one more attempt and return how long to wait before making it."""
        self.attempts += 1
        backed_off = self.attempts - self.immediate
        if backed_off <= 0:
            delay = 0
        else:
            exponential = self.base_ns * 2 ** min(backed_off - 1, 32)
            delay = min(self.cap_ns, int(exponential * self.rng.uniform(1.0, 1.5)))
        if maintenance:
            delay = max(delay, self.maintenance_ns)
        return delay

    def healthy(self) -> None:
        """A connection worked (it delivered book data): start counting again."""
        self.attempts = 0
