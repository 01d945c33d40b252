"""The project's exceptions: one base class, a few kinds, messages that say what to do.

Part of the standard-library-only `core`, so every package may import it.
"""


class NoddError(Exception):
    """Base class of every error nodd raises on purpose. The CLI prints it as one line."""


class ConfigError(NoddError):
    """A config file, key or value is wrong. The message names the field and the valid choices."""


class DataError(NoddError):
    """Input data or shards are missing, corrupt or inconsistent (wrong fingerprint, bad checksum)."""


class SampleError(DataError):
    """One input sample cannot be used. Prep records it in errors.jsonl and goes on."""


class ClusterError(NoddError):
    """A scheduler, cluster or launcher is missing, unreachable or refused a job."""
