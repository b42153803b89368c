"""The wall clock of a long run: timestamped progress lines and the ``--stop-at`` deadline."""

from __future__ import annotations

import time


def timed_log(started: float, *, clock: bool = False):
    """A ``log(message)`` that prefixes the seconds since ``started`` (a ``time.perf_counter()``).

    ``clock`` also prints the UTC time of day, for runs of hours read beside ``--stop-at``:
    ``[12:03:04 +  512 s] message``; without it: ``[   512 s] message``.
    """

    def log(message: str) -> None:
        elapsed = time.perf_counter() - started
        if clock:
            print(f"[{time.strftime('%H:%M:%S', time.gmtime())} +{elapsed:5.0f} s] {message}", flush=True)
        else:
            print(f"[{elapsed:6.0f} s] {message}", flush=True)

    return log


def past_stop(stop_at: str | None) -> bool:
    """Whether the wall clock (UTC) is past ``stop_at`` (HH:MM, today); never when it is None or empty."""
    if not stop_at:
        return False
    now = time.gmtime()
    hour, minute = (int(x) for x in stop_at.split(":"))
    return (now.tm_hour, now.tm_min) >= (hour, minute)
