"""Unexpected failures, as the other end of a connection hears of them: a generic message and an incident id,
never the exception's text or traceback (they name files, code and internal state). The details go to this side's
log under the same id, so an operator finds them from what the client reports."""

from __future__ import annotations

import logging
import secrets


def new_incident_id() -> str:
    return secrets.token_hex(4)


def internal_error(log: logging.Logger, what: str) -> str:
    """Logs the exception being handled (call it from an ``except`` block) with a fresh incident id, as the
    failure of ``what``; returns what the client is told."""
    incident = new_incident_id()
    log.error("%s failed: internal error, incident %s", what, incident, exc_info=True)
    return f"internal error (incident {incident}); the server's log has the details"
