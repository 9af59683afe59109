"""The wire, below the hooks: protocol and retries, codec, connection settings, validation.

Nothing here imports a hook, an operator or the export pipeline; everything above imports from here.
Only for internal usage: these modules are not part of the public API.
"""
