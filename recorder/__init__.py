"""``kbook record``: record Kraken's v1 or v2 order book feed losslessly into per-pair segments.

Library first: ``Recorder(RecordConfig(pairs=("BTC/USD",), depth=100)).run()`` returns a
``RecordSummary``; ``Recorder.stop()`` ends it cleanly from another thread. It records Kraken's
WebSocket v2 unless ``api="v1"`` or a ``url`` whose path does not end in ``/v2`` says v1
(``kbook.api.choose_api``). The live session (connection, subscriptions, backoff, the clock) is
``kbook.live``, shared with ``kbook watch``; here, one module per stage: ``segments`` (files,
rotation, checkpoints), ``lock``, ``status``, ``record``; beside it, ``monitor``
(what the loop calls once a second), ``metrics`` (Prometheus) and ``upload`` (segments to object
storage, retention).
"""

from kbook.api import DEPTHS
from kbook.live.signals import stop_on_signals
from recorder.config import RecordConfig, RecordSummary
from recorder.record import Recorder

__all__ = ["DEPTHS", "RecordConfig", "RecordSummary", "Recorder", "stop_on_signals"]
