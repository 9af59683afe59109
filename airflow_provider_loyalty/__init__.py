"""Apache Airflow provider for a loyalty platform's HTTP API.

The provider registers the ``loyalty`` connection type and ships a hook, a deferrable sensor and
trigger, export operators (local / object storage and S3) and an offline API emulator
(:mod:`airflow_provider_loyalty.testing`).
"""

from __future__ import annotations

__version__ = "2.1.0"

__all__ = ["__version__"]
