"""Errors that the CLI turns into a one-paragraph message and a non-zero exit."""


class UmdbenchError(Exception):
    """A user-facing error: the message says what was wrong and how to fix it."""

    exit_code = 2


class UnknownNameError(UmdbenchError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class RegistryCollisionError(UmdbenchError):
    pass


class ConfigError(UmdbenchError):
    pass


class CheckpointError(UmdbenchError):
    pass


class StoreError(UmdbenchError):
    pass


class PluginError(UmdbenchError):
    """A plugin rejected its configuration or failed in its own code; the message names the plugin."""
