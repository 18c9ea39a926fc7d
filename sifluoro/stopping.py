"""Ending a long-running command the way an operator does: Ctrl-C or a service manager's SIGTERM."""
from __future__ import annotations

import signal
import threading


def stop_on_signals() -> threading.Event:
    """The first SIGTERM/SIGINT asks the command to wind up (its summary and reports still
    come); a second one ends it at once, as it would without this handler. Call from the
    main thread."""
    stop = threading.Event()

    def handler(signum, frame):
        stop.set()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop
