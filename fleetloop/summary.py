"""The per-version summary now lives in ``cloud.data.version_summary`` (the learner reads it too); kept here for the
demo's and older callers' imports."""

from cloud.data.version_summary import VersionSummary, autonomy_climbed, summarize

__all__ = ["VersionSummary", "autonomy_climbed", "summarize"]
