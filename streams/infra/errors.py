from schemas.errors import OmnistreamError


class InfraError(OmnistreamError, RuntimeError):
    """A service could not be found or started; the message is one sentence a user can act on."""

    def __init__(self, message: str, command: str | None = None, detail: str | None = None):
        self.command = command
        self.detail = detail
        text = message if command is None else f"{message} (command: {command})"
        super().__init__(text)
