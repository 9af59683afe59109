"""Shared test support: helpers, the operator driver, the dag.test() runner, a transfer process."""
