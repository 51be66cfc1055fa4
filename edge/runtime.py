"""What the control loop needs from a policy runtime, whether the policy runs here or in the cloud.

``LocalPolicyRuntime`` (edge.local_runtime) and ``RemotePolicyRuntime`` (edge.remote_runtime) both implement it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from policies.tensor_view import Buffer


class PolicyRuntime(Protocol):
    """Called from the control thread only (``load`` excepted); no method waits past the tick's deadline."""

    swaps: int  # versions swapped in so far
    late_inferences: int  # ticks whose action was not ready by their deadline

    @property
    def version(self) -> int:
        """The version whose actions are applied now; 0 before the first."""
        ...

    @property
    def update_bytes(self) -> int:
        """Size of the update that brought the current version (0 when it came by no update to this edge)."""
        ...

    def load(self, name: str, version: int, weights: Buffer) -> None:
        """Weights that passed their checksum, from the tunnel thread; returns at once."""
        ...

    def begin_tick(self) -> bool:
        """Swaps a ready version in between two ticks; True when it did."""
        ...

    def reset(self) -> None:
        """A new episode starts: actions planned for the last one are dropped."""
        ...

    def next_action(self, observation: dict[str, np.ndarray], deadline: float) -> tuple[np.ndarray | None, int]:
        """The action for this tick and the version that produced it; None when none is ready by ``deadline``."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class RollsBack(Protocol):
    """A runtime that holds weights on the edge, which the cloud may roll back (a canary version that did worse)."""

    def roll_back_to(self, name: str, bad: int, to: int) -> None:
        """From the tunnel thread: ``bad`` is never swapped in again, and ``to`` (older) may replace it."""
        ...
