"""Imports that moved between the Airflow versions this provider supports (3.1 and newer)."""

from __future__ import annotations

from typing import Any


def mask_secret(secret: str) -> None:
    """Register ``secret`` with Airflow's secrets masker (task process and supervisor)."""
    from airflow.sdk.log import mask_secret as _mask

    _mask(secret)


def default_deferrable() -> bool:
    """``[operators] default_deferrable``, the convention of official providers."""
    from airflow.providers.common.compat.sdk import conf

    value: Any = conf.getboolean("operators", "default_deferrable", fallback=False)
    return bool(value)
