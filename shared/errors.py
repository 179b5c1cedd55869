"""Named errors of the shared package; services map them to HTTP answers or socket closes."""


class RelayXError(Exception):
    """Base of every RelayX error."""


class NotFound(RelayXError):
    """A row that was asked for does not exist."""


class StorageError(RelayXError):
    """The database refused or failed a write; callers retry with a bound or surface it."""


class ConfigurationError(RelayXError):
    """Settings are missing or contradictory (a model file absent, a bad URL)."""
