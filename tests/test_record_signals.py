"""A second SIGINT/SIGTERM ends the process at once, even when closing hangs (a stuck disk)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

HANGING_STOP = textwrap.dedent(
    """
    import sys, time
    from kbook.live.signals import stop_on_signals

    class StuckRecorder:
        stopping = False

        def stop(self, reason="stopped"):
            self.stopping = True
            print("stopping:", reason, flush=True)

    target = StuckRecorder()
    with stop_on_signals(target):
        print("ready", flush=True)
        while True:  # the first signal starts a close that never finishes
            time.sleep(0.01)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_second_signal_exits_at_once(sig: signal.Signals) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", HANGING_STOP], stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(sig)
        assert proc.stdout.readline().strip() == f"stopping: {sig.name}"
        assert proc.poll() is None, "the first signal must only ask to stop"
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 128 + sig
