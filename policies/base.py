"""The policy interface: everything the edge runtime and the learner need from a policy."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Annotated, Any, ClassVar, Self

import numpy as np
import torch
from pydantic import Field

from hal.config import CodeConfig, validate

# Every policy class by its type_name, filled as the classes are defined (policies.factory imports them all).
POLICY_TYPES: dict[str, type[Policy]] = {}

# Units in one layer, at most: a config from a weights file cannot make the constructor allocate a huge layer.
MAX_WIDTH = 1 << 14
Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]


def policy_class(type_name: str) -> type[Policy]:
    cls = POLICY_TYPES.get(type_name)
    if cls is None:
        raise ValueError(f"unknown policy type {type_name!r}; known: {sorted(POLICY_TYPES)}")
    return cls


class PolicyConfig(CodeConfig):
    """A built-in policy's architecture. Weights files carry it as JSON: it is checked whole before any layer is
    built, so a bad or hostile one is refused with the field named (``mlp.hidden[1]: ...``)."""

    def as_dict(self) -> dict[str, Any]:
        """JSON types (lists, not tuples): saved in weights and compared as JSON text between versions."""
        return self.model_dump(mode="json")


class Policy(ABC, torch.nn.Module):
    """A trainable policy. ``act`` maps one observation to an action chunk.

    Subclasses register under ``type_name`` so that a safetensors file (whose metadata
    carries the type and config) can be turned back into a policy without pickle.
    """

    type_name: ClassVar[str]
    # The config the constructor takes; None: the constructor takes the config dict's keys as keywords (lerobot).
    config_type: ClassVar[type[PolicyConfig] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("type_name")
        if name:
            POLICY_TYPES[name] = cls

    @abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """A JSON-serializable config from which ``from_config`` rebuilds the same architecture."""

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        """The policy ``config_dict`` describes; a ``ConfigError`` naming the field when ``config`` does not fit."""
        if cls.config_type is None:
            return cls(**config)
        return cls(validate(cls.config_type, config, cls.type_name))

    def reset(self) -> None:
        """Called at the start of every episode (clears any internal queue or history)."""

    @abstractmethod
    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        """Returns an action chunk of shape (chunk_size, action_dim), float32, for one observation."""

    def act_batch(self, observations: list[dict[str, np.ndarray]]) -> np.ndarray:
        """Action chunks for several observations at once, (B, chunk_size, action_dim); one forward pass where
        the policy can (remote inference batches robots' requests through this)."""
        return np.stack([self.act(observation) for observation in observations])

    @abstractmethod
    def fit_normalization(self, batch: dict[str, np.ndarray]) -> None:
        """Sets observation/action normalization from a dataset ("obs.<name>", "action" arrays)."""

    @abstractmethod
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-sample training loss, shape (B,). Batch keys: "obs.<name>", "action"."""
