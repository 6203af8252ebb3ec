"""Who may see what: until authentication is switched on, `userId` scopes the caller."""

from __future__ import annotations


def visible(owner_id: str | None, user_id: str | None) -> bool:
    """True when a caller acting as `user_id` may see something owned by `owner_id`.

    No caller id sees everything; something without an owner is everyone's.
    """
    return user_id is None or owner_id is None or owner_id == user_id
