"""The backoff schedule between attempts at one file (pure: no clock, no randomness of its own)."""

from __future__ import annotations

from sft_agent.settings import RetrySettings


def retry_delay(settings: RetrySettings, failed_attempts: int, *, spread: float = 0.5) -> float:
    """Seconds to wait after the ``failed_attempts``-th failure before the next attempt.

    ``min(initial_delay × multiplier^(failed_attempts-1), max_delay)``, moved by up to
    ``± jitter`` of itself: ``spread`` in [0, 1] picks where (0.5 is the middle, no jitter),
    so callers pass ``random.random()`` and tests pass fixed values. The result never
    exceeds ``max_delay``.
    """
    if failed_attempts < 1:
        raise ValueError("failed_attempts starts at 1")
    exponent = min(failed_attempts - 1, 64)  # beyond this the cap applies anyway
    base = min(settings.initial_delay * settings.multiplier**exponent, settings.max_delay)
    jittered = base * (1.0 + settings.jitter * (2.0 * spread - 1.0))
    return max(0.0, min(jittered, settings.max_delay))


def gives_up(settings: RetrySettings, failed_attempts: int) -> bool:
    """True once ``failed_attempts`` reached the route's ``max_attempts``."""
    return failed_attempts >= settings.max_attempts
