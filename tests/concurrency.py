"""Run test code in several Python threads at once, with the interpreter switching between them every
few microseconds (its default is every 5 ms), so that one thread's call is interrupted inside another's."""

from __future__ import annotations

import sys
import threading
from typing import Callable, Sequence


def run_in_threads(target: Callable, arguments: Sequence, switch_interval: float = 1e-5) -> None:
    """``target(argument)`` in one thread per argument, started together and joined; the switch
    interval restored afterwards."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(switch_interval)
    try:
        threads = [threading.Thread(target=target, args=(a,)) for a in arguments]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
