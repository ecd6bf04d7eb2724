"""A Kraken WebSocket ``book`` and ``trade`` simulator (v2 by default, or v1 with ``api="v1"``): a
real server for tests and for ``kbook simulate``. Trades take the best level of the book they are
served beside, and its next update shows it (``kbook.sim.server``).

    from kbook.sim import Simulator, SimulatorConfig
    with Simulator(SimulatorConfig(pairs=("BTC/USD",), rate=1000)) as sim:
        ...  # connect to sim.url (``/v2`` for v2); arm sim.faults; inspect sim.sent; sim.wait_for(...)

Layers, no I/O at the bottom: ``market`` (a seeded exchange book that emits v1 frames with correct
checksums) and ``market_v2`` (the same market printed as v2 frames), ``protocol`` and
``protocol_v2`` (control frames and subscribe decisions, worded as Kraken words them), ``dialect``
(which of the two the server speaks), ``playback`` (recorded v1 frames to serve again), ``faults``
(what can go wrong, on demand), ``config``, ``server`` (the ``websockets`` server, asyncio) and
``simulator`` (``Simulator``: the server in a background thread). ``run`` is ``kbook simulate`` as
a library call.

v2 (the default; ``kbook simulate``): the same server, markets and faults speak Kraken's v2 shapes
(``kbook.sim.protocol_v2``, ``kbook.sim.market_v2``); symbols are ``BTC/USD`` and ``DOGE/USD``
only, so the BTC modes below do not apply. Maintenance is a ``status`` frame with
``"system":"maintenance"``. v1 (``SimulatorConfig(api="v1")``, ``kbook simulate --api v1``) speaks
Kraken's frozen v1 API. Playback (``capture``) is v1 only, and the API it picks when none is given.

BTC/USD handling (``SimulatorConfig.btc``, ``kbook simulate --btc``). Kraken v1 data frames name
pairs by their ``wsname`` (``XBT/USD``, ``XDG/USD``), but Kraken's v1 pages show ``BTC/USD`` and no
capture shows what v1 answers to it (``shared/kraken/README.md`` section 1). A client must cope with
all three answers, so the simulator offers each:

- ``echo-xbt`` (default, what the wsname implies): ``BTC/USD`` is accepted and every frame,
  subscriptionStatus included, says ``XBT/USD``;
- ``echo-btc``: ``BTC/USD`` is accepted and echoed as ``BTC/USD`` in every frame;
- ``reject``: ``BTC/USD`` gets ``Currency pair not supported BTC/USD``; the client must retry
  with ``XBT/USD``.

``DOGE``/``XDG`` behave the same way. ``XBT/USD`` itself is always accepted and echoed as is; both
spellings share one market, and subscribing to both is ``Already subscribed``. In playback the
frames keep the recorded pair name, so both echo modes answer with the recorded spelling.
"""

from kbook.api import DEPTHS
from kbook.sim.config import KINDS, SentFrame, SimulatorConfig
from kbook.sim.faults import Fault, Faults
from kbook.sim.market import Market, PairSpec, spec_for
from kbook.sim.market_v2 import V2Market, v2_spec
from kbook.sim.playback import Capture, load_capture
from kbook.sim.simulator import Simulator

__all__ = [
    "DEPTHS",
    "KINDS",
    "Capture",
    "Fault",
    "Faults",
    "Market",
    "PairSpec",
    "SentFrame",
    "Simulator",
    "SimulatorConfig",
    "V2Market",
    "load_capture",
    "spec_for",
    "v2_spec",
]
