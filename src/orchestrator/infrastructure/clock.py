"""The system clock."""

from __future__ import annotations

import datetime as dt


class SystemClock:
    """UTC now."""

    def now(self) -> dt.datetime:
        """The current time, timezone-aware UTC."""
        return dt.datetime.now(dt.UTC)
