"""SIGINT (Ctrl-C) and SIGTERM (what schedulers send on preemption) as requests to stop.

Inside :class:`StopRequests` the signals only set a flag; the training loop looks at it between
two steps, saves the state of the last completed step and stops. A second Ctrl-C stops at once
(the last checkpoint on disk stays intact). A signal that the process inherited as ignored
(``nohup``, a background job's SIGINT) stays ignored.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal number


class StopRequests:
    """Context manager that turns SIGINT/SIGTERM into :attr:`received` (the first signal)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is not threading.main_thread():
            return self  # signals can only be handled in the main thread
        for signum in EXIT_CODES:
            if signal.getsignal(signum) is signal.SIG_IGN:
                continue
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        if self.received is None:
            self.received = signum

    @property
    def requested(self) -> bool:
        return self.received is not None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]
        self._previous.clear()


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name
