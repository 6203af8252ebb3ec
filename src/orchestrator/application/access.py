"""Who may see and change what.

Without authentication (AUTH_MODE=none) a call's `userId` only narrows what it sees, and what
has no owner is everyone's. With authentication on, a caller sees and changes only what they
own; an admin (if the deployment names one) reads everything.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    """Who makes a call: `user_id` owns what they create."""

    user_id: str | None = None
    scoped: bool = False  # authentication is on: only their own
    reads_all: bool = False  # an admin: reads everything (changes only their own)

    def may_read(self, owner_id: str | None) -> bool:
        """True when the caller may see something owned by `owner_id`."""
        return self.reads_all or self.may_change(owner_id)

    def may_change(self, owner_id: str | None) -> bool:
        """True when the caller may change (cancel, edit, run...) something of `owner_id`."""
        if self.scoped:
            return owner_id is not None and owner_id == self.user_id
        return self.user_id is None or owner_id is None or owner_id == self.user_id

    @property
    def only(self) -> str | None:
        """The owner a list is narrowed to (None: every owner's)."""
        return None if self.reads_all else self.user_id


ANYONE = Caller()
"""No authentication and no `userId`: everything is visible."""
