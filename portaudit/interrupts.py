"""Ctrl-C (SIGINT) and SIGTERM: stop cleanly, with exit code 128 + the signal number.

The command line installs :func:`install`: both signals raise :class:`Interrupted` (a
KeyboardInterrupt) wherever the program is, so every ``finally`` runs: temporary files are
removed (:mod:`portaudit.safe_io`, the upstream fetcher, the index cache) and nothing is left
half-written. The signal is also remembered, because a library may swallow the exception and raise
something else instead (libcst turns an interrupt inside its metadata resolution into a KeyError
whose message is a dump of the whole syntax tree); the error handler then still reports an
interruption (exit 130 / 143), not an internal error.
"""

from __future__ import annotations

import signal
from typing import Optional

_received: Optional[int] = None


class Interrupted(KeyboardInterrupt):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _handler(signum, frame) -> None:
    global _received
    _received = signum
    raise Interrupted(signum)


def install() -> None:
    """Route SIGINT and SIGTERM through :func:`_handler` (a signal the parent ignores stays ignored:
    a background job started by a shell without job control must keep ignoring Ctrl-C)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _handler)


def received() -> Optional[int]:
    """The signal that interrupted this process, if one did."""
    return _received


def exit_code(exc: Optional[BaseException] = None) -> int:
    """128 + the signal number: 130 for Ctrl-C (also a plain KeyboardInterrupt), 143 for SIGTERM."""
    signum = getattr(exc, "signum", None) or _received or signal.SIGINT
    return 128 + int(signum)


def describe(code: int) -> str:
    try:
        return signal.Signals(code - 128).name
    except ValueError:
        return "a signal"
