"""Waiting in tests for something another process does."""

import time


def wait_until(predicate, timeout: float, what: str, every: float = 0.2):
    """The first truthy value of `predicate()`, polled every `every` s; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
