"""The exception types every layer shares; each names an expected failure."""

from __future__ import annotations


class TalkbotError(Exception):
    """Base of every expected talkbot failure."""


class ConfigError(TalkbotError):
    """The configuration is invalid; ``problems`` holds (field, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{field}: {reason}" for field, reason in problems))

    def one_line(self) -> str:
        field, reason = self.problems[0]
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return f"invalid config: {field}: {reason}{more}"


class StoreError(TalkbotError):
    """The store could not be opened or is locked by another process."""


class StoreVersionError(StoreError):
    """The store was written by a newer talkbot (or is of a shape we do not know):
    starting again cannot help, so the daemon exits like on a broken config."""


class StoreUnavailableError(StoreError):
    """The store cannot commit now (locked by another process, disk full, I/O error):
    a webhook refused with it was not acknowledged; the store recovers by itself."""


class LeaseLostError(TalkbotError):
    """With replicas: this replica's lease on the room lapsed before it could post what
    a turn produced (its heartbeat stalled). Another replica may hold the room and redo
    the event by now, so this one posts nothing and leaves the event open to it."""


class TalkError(TalkbotError):
    """A bot API call to Nextcloud Talk failed."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class TalkAuthError(TalkError):
    """401: wrong secret, bot not enabled in the room, or unknown room. Never retried."""


class TalkRejectedError(TalkError):
    """4xx other than 401/429: the request itself is wrong. Never retried."""


class TalkRateLimitedError(TalkError):
    """429 after retries: Talk's brute-force protection is throttling this address."""


class TalkUnavailableError(TalkError):
    """5xx, timeout or connection failure after retries."""


class TalkOutcomeUnknownError(TalkUnavailableError):
    """A post timed out or lost its connection after it was sent: Talk may have stored it.

    Talk does not deduplicate by referenceId, so the post is not sent again, by the client
    or by anyone catching this.
    """


class LLMError(TalkbotError):
    """The model endpoint failed or answered something unusable."""


class ToolError(TalkbotError):
    """A tool's expected failure; its text goes back to the model."""


class NextcloudError(TalkbotError):
    """Nextcloud's provisioning API did not give an answer we can use."""


class NextcloudAuthError(NextcloudError):
    """401: the account's user name or app password is wrong (never retried: repeated
    401s feed Nextcloud's brute-force throttle)."""
