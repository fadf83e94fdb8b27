"""The one exception type the serving code raises for a bad request."""

from __future__ import annotations


class RequestError(Exception):
    """A request the server refuses, with the HTTP status to answer and a message for the client.

    400 for malformed input (bad scale, unreadable image, too many images, prompt over the context),
    401 for a wrong API key, 404 for an unknown model, 413 for a body or image over the size limit,
    503 when the server's queue is full.
    """

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def __repr__(self) -> str:
        return f"RequestError({self.status}, {self.message!r})"
