"""Tells the operator, in words, when the link is slower than the robot: the upload backlog grew, or drained.

Rate-limited: one line when the backlog first passes its threshold, one more every ``remind_s`` while it stays
above, and one when it drains. The clock is injectable so the wording and the pacing are tested without waiting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from edge.spool import Backlog

log = logging.getLogger("fleetloop.tunnel")

BACKLOG_WARN_S = 10.0  # the oldest unacked step waited this long: the link does not keep up
BACKLOG_REMIND_S = 30.0


class BacklogWatch:
    def __init__(
        self,
        warn_after_s: float = BACKLOG_WARN_S,
        remind_s: float = BACKLOG_REMIND_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.warn_after_s = warn_after_s
        self.remind_s = remind_s
        self.clock = clock
        self.behind_since: float | None = None  # when it first said the link is behind (None: it is not)
        self._said_at = 0.0

    def update(self, backlog: Backlog) -> str:
        """Logs what changed, if anything worth a line did; returns the line ("" when nothing was said)."""
        now = self.clock()
        if self.behind_since is None:
            if backlog.oldest_s < self.warn_after_s:
                return ""
            self.behind_since = now
        elif backlog.steps == 0:
            line = f"upload backlog drained after {now - self.behind_since:.0f} s: every recorded step is in the cloud"
            self.behind_since = None
            log.info(line)
            return line
        elif now - self._said_at < self.remind_s:
            return ""
        self._said_at = now
        line = (
            f"link slower than the robot: {backlog.steps:,} steps ({backlog.bytes / 1e6:.0f} MB) wait to upload, "
            f"oldest {backlog.oldest_s:.0f} s; interventions and labelled episodes go first, nothing is dropped"
        )
        log.warning(line)
        return line
