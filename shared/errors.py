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


class StorageUnavailable(StorageError):
    """The database could not be reached (down, restarting, unreachable): the write may succeed later.

    A plain `StorageError` is a database that answered and refused; callers that must tell the two
    apart (the SID check of a status callback) catch this one first.
    """


class ConfigurationError(RelayXError):
    """Settings are missing or contradictory (a model file absent, a bad URL)."""
