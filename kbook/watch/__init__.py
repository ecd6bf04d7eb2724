"""``kbook watch``: a live view of one pair's book. One module per part:

- ``kbook.watch.state``: the ``Watcher`` (the state on screen), displays, ``run_watch``;
- ``kbook.watch.sources``: what drives a ``Watcher``: the live session (``LiveSource``, a consumer
  of ``kbook.live.session``, shared with the recorder) or a recording (``ReplaySource``);
- ``kbook.watch.view``: pure functions from ``(book, status)`` to a rich renderable or plain text.
"""

from kbook.watch.state import Watcher, WatchOptions, WatchSummary, live_config, run_watch

__all__ = ["WatchOptions", "WatchSummary", "Watcher", "live_config", "run_watch"]
