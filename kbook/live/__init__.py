"""The live side shared by ``kbook record`` and ``kbook watch``: one session with Kraken.

``connection`` (a reader thread per connection, a bounded inbox), ``session`` (connect, backoff,
subscriptions, the clock; hands frames to a consumer), ``subscriptions`` (what to request, no
I/O), ``backoff`` (when to reconnect), ``signals`` (a signal asks the session to stop). The wire
shapes of v1 and v2 are ``kbook.dialect``'s.
"""
