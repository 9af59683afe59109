"""The export pipeline, between the hooks and the operators.

create → wait → download → verify → land → checkpoint, written once: the export loop drives a
:class:`~airflow_provider_loyalty.hooks.loyalty.LoyaltyHook` below it and lands verified parts in a
sink; both export operators above it differ only in the sink they build.
Only for internal usage: these modules are not part of the public API.
"""
