"""What an export or import shows while it runs: one rich bar over episodes, and none of ``datasets``' own.

lerobot's ``datasets`` dependency draws a "Map" bar per episode; under our bar those would break the display,
so both directions turn them off while they run and back on afterwards if they were on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress


@contextmanager
def datasets_bars_off() -> Iterator[None]:
    """Silences ``datasets``' progress bars for the block, restoring them after if they were on."""
    import datasets as hf_datasets  # lerobot's own dependency, imported only when lerobot is about to be

    bars_were_on = hf_datasets.utils.logging.is_progress_bar_enabled()
    hf_datasets.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars_were_on:
            hf_datasets.utils.logging.enable_progress_bar()


def episode_bar(verb: str, counted: str, shown: bool) -> Progress:
    """A bar over episodes, labelled ``verb``, that also shows the task field ``counted`` (frames or steps)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn  # only when run

    return Progress(
        TextColumn(f"[bold]{verb}[/] {{task.description}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(f"episodes, {{task.fields[{counted}]}} {counted}"),
        TimeRemainingColumn(),
        disable=not shown,
        transient=False,
    )
