"""The one way a test waits for something that happens in another process or thread.

    wait_until(lambda: emulator.count("exchange_ok") > before, 30, "a renewal by the daemon")

Every wait is bounded and names what it waited for, so a timeout reads as a test failure
("timed out after 30 s waiting for a renewal by the daemon"), never as a hang. Wait for a
sign that the moment has come (a marker file, a record of the peer, an event); never sleep a
fixed time and hope.
"""

import time
from typing import Callable, TypeVar

T = TypeVar("T")

# Short enough that a test goes on at once, long enough not to compete for a busy machine's CPU.
POLL_INTERVAL = 0.05


def wait_until(predicate: Callable[[], T], timeout: float, what: str,
               interval: float = POLL_INTERVAL) -> T:
    """Call `predicate` until it returns a truthy value and return that value.

    It is called once more at the deadline, so a slow predicate gets its last chance. After
    `timeout` seconds: AssertionError naming `what`. An exception from `predicate` (e.g. "the
    process we wait on has exited") ends the wait at once and reaches the test unchanged.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(min(interval, left))
