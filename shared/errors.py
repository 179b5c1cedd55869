"""Named errors of the shared package; services map them to HTTP answers or socket closes."""


class RelayXError(Exception):
    """Base of every RelayX error."""


class NotFound(RelayXError):
    """A row that was asked for does not exist; `what` names it ("agent 42"), the message says so.

    The backend answers every uncaught `NotFound` with a 404 and this message.
    """

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not found")
        self.what = what


class StorageError(RelayXError):
    """The database refused or failed a write; callers retry with a bound or surface it."""


class ConfigurationError(RelayXError):
    """Settings are missing or contradictory (a model file absent, a bad URL)."""
