"""One retry policy for every client of the API (the sync and the async hook).

Retried: :class:`LoyaltyTransientError` only (429, 5xx, timeouts, resets, truncated bodies),
at most ``max_retries`` times, with full-jitter exponential backoff; a ``Retry-After`` the server
sent wins over the backoff (capped). Auth, validation and other API errors are never retried.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from airflow_provider_loyalty.exceptions import LoyaltyTransientError
from airflow_provider_loyalty.utils.connection import LoyaltyConnectionSettings

T = TypeVar("T")


def retry_policy(settings: LoyaltyConnectionSettings, log: logging.Logger | Any) -> dict[str, Any]:
    """Keyword arguments for ``tenacity.Retrying`` / ``AsyncRetrying`` implementing the policy."""
    backoff = wait_random_exponential(multiplier=settings.retry_backoff, max=settings.max_retry_wait)

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, LoyaltyTransientError) and error.retry_after is not None:
            return min(error.retry_after, settings.max_retry_wait)
        return float(backoff(state))

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "Loyalty API transient failure (%s); retry %d of %d in %.2f s",
            error,
            state.attempt_number,
            settings.max_retries,
            delay,
        )

    return {
        "retry": retry_if_exception_type(LoyaltyTransientError),
        "stop": stop_after_attempt(settings.max_retries + 1),
        "wait": wait,
        "before_sleep": before_sleep,
        "reraise": True,
    }


def creation_policy(policy: dict[str, Any], log: logging.Logger | Any) -> dict[str, Any]:
    """``policy`` for a request that creates something on the server (an export task).

    It keeps every retry: a failure after which the server may have acted on the request (a
    timeout, a reset, a cut reply, a 5xx other than 503) may leave one unused task per retry, but
    giving up instead only hands the same retry to the task's ``retries`` (which create again) and
    fails exports a network blip would not. Each such retry is logged as one that may duplicate.

    :param policy: the policy (:func:`retry_policy`).
    :param log: where the warning goes.
    """
    before_sleep = policy["before_sleep"]

    def warn_then_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, LoyaltyTransientError) and not error.unprocessed:
            log.warning(
                "The server may have created an export task before this failure; if so, that task "
                "is never used and expires (the API offers no way to find it)"
            )
        before_sleep(state)

    return {**policy, "before_sleep": warn_then_sleep}


def call_with_retries(policy: dict[str, Any], call: Callable[[], T]) -> T:
    """``call()`` under a retry policy (:func:`retry_policy`).

    The first attempt runs bare: a call that succeeds, the common case, pays nothing for tenacity's
    bookkeeping. A transient failure of it is replayed to tenacity as its first attempt, so the
    retries, waits and log lines are exactly the policy's.

    :param policy: keyword arguments of ``tenacity.Retrying``.
    :param call: one attempt.
    """
    try:
        return call()
    except LoyaltyTransientError as failure:
        first: LoyaltyTransientError | None = failure

    def attempt() -> T:
        nonlocal first
        if first is not None:
            failure, first = first, None
            raise failure
        return call()

    return Retrying(**policy)(attempt)


async def call_with_retries_async(policy: dict[str, Any], call: Callable[[], Awaitable[T]]) -> T:
    """:func:`call_with_retries` for coroutines: tenacity's ``AsyncRetrying`` waits with ``asyncio.sleep``.

    :param policy: keyword arguments of ``tenacity.AsyncRetrying``.
    :param call: one attempt.
    """
    try:
        return await call()
    except LoyaltyTransientError as failure:
        first: LoyaltyTransientError | None = failure

    async def attempt() -> T:
        nonlocal first
        if first is not None:
            failure, first = first, None
            raise failure
        return await call()

    return await AsyncRetrying(**policy)(attempt)
