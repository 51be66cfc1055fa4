"""A small MLP policy over flattened float observations (behaviour cloning, optional action chunks)."""

from __future__ import annotations

from itertools import pairwise
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import AfterValidator, Field, model_validator
from torch import nn

from hal.config import ConfigModel, Items, Name, invalid
from policies.base import Policy, PolicyConfig, Width

# A feature or action dimension that barely varies in the data would otherwise blow up when it does vary.
MIN_STD = 1e-2
# Bounds on what a config may ask for, so that one read from a weights file cannot build something huge.
MAX_DIM, MAX_STATE, MAX_IMAGE_CHANNELS, MAX_CHUNK, MAX_LAYERS = 1 << 16, 1 << 16, 64, 1000, 16
MAX_LEVELS = 16  # choices of one discrete action entry
_KINDS = {"any": "", "state": "non-image ", "image": "uint8 (H, W, C) image "}  # as a config's ``needs`` says


def is_image(spec: dict[str, Any]) -> bool:
    """uint8 arrays of shape (H, W, C) are camera images; everything else is a state vector."""
    return spec["dtype"] == "uint8" and len(spec["shape"]) == 3


def _numeric_dtype(name: str) -> str:
    try:
        kind = np.dtype(name).kind
    except TypeError:
        kind = ""
    if kind not in ("b", "i", "u", "f"):
        raise ValueError(f"expected a numeric numpy dtype such as 'float32' or 'uint8', got {name!r}")
    return name


class ObservationSpec(ConfigModel):
    """One observation array; uint8 (H, W, C) ones are camera images."""

    shape: Annotated[Items[Annotated[int, Field(ge=1, le=MAX_DIM)]], Field(max_length=4)]
    dtype: Annotated[Name, AfterValidator(_numeric_dtype)]


Hidden = Annotated[Items[Width], Field(max_length=MAX_LAYERS)]
Levels = Annotated[Items[float], Field(max_length=MAX_LEVELS)]


def _check_levels(levels: tuple[tuple[float, ...], ...], action_dim: int) -> None:
    if levels and len(levels) != action_dim:
        raise invalid(f"one entry per action entry ({action_dim}), got {len(levels)}", "action_levels")
    for i, entry in enumerate(levels):
        if entry and (len(entry) < 2 or any(b <= a for a, b in pairwise(entry))):
            raise invalid(f"[] or at least two increasing values, got {list(entry)}", "action_levels", i)


class NormalizedConfig(PolicyConfig):
    """What the MLP, CNN and SAC actor share: observations, actions per prediction, the head's hidden layers."""

    observation: Annotated[dict[Name, ObservationSpec], Field(max_length=256)]
    action_dim: Width
    chunk_size: Annotated[int, Field(ge=1, le=MAX_CHUNK)] = 1
    hidden: Hidden = (256, 256)
    # Per action entry: [] (a continuous value, regressed) or the values it takes (a choice, classified), e.g. a
    # gripper's 0 open / 1 stay / 2 close: regression would average open and close into a half-closed dither.
    action_levels: Annotated[Items[Levels], Field(max_length=MAX_DIM)] = ()
    needs: ClassVar[Literal["any", "state", "image"]] = "any"  # the kind of observation it cannot do without

    @model_validator(mode="after")
    def _sizes_fit(self) -> NormalizedConfig:
        have = {"any": list(self.observation), "state": self.state_keys, "image": self.image_keys}[self.needs]
        if not have:
            raise invalid(f"needs at least one {_KINDS[self.needs]}observation", "observation")
        if self.state_dim > MAX_STATE:
            raise invalid(f"the state vector would hold {self.state_dim} values, at most {MAX_STATE}", "observation")
        for name in self.image_keys:
            if self.observation[name].shape[2] > MAX_IMAGE_CHANNELS:
                why = f"an image has at most {MAX_IMAGE_CHANNELS} channels, got {self.observation[name].shape[2]}"
                raise invalid(why, "observation", name, "shape", 2)
        _check_levels(self.action_levels, self.action_dim)
        return self

    def _is_image(self, name: str) -> bool:
        return is_image(self.observation[name].model_dump())

    @property
    def state_keys(self) -> list[str]:
        return sorted(k for k in self.observation if not self._is_image(k))

    @property
    def image_keys(self) -> list[str]:
        return sorted(k for k in self.observation if self._is_image(k))

    @property
    def state_dim(self) -> int:
        return sum(int(np.prod(self.observation[k].shape)) for k in self.state_keys)


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def mean_std(values: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    values = np.asarray(values, dtype=np.float64)
    mean = values.mean(axis=0)
    std = np.maximum(values.std(axis=0), MIN_STD)
    return torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)


class NormalizedPolicy(Policy):
    """Shared plumbing: a state vector from the non-image keys and the action, both normalized by buffers; camera
    encoders (none here); an MLP head over their features, kept under ``head_name`` (saved weights use that key).

    Batches carry "obs.<name>" (B, *shape) and "action" (B, action_dim) or (B, chunk_size, action_dim).
    """

    head_name: ClassVar[str] = "net"

    def __init__(self, config: NormalizedConfig) -> None:
        super().__init__()
        self.config = config
        self.observation = config.as_dict()["observation"]
        self.action_dim, self.chunk_size = config.action_dim, config.chunk_size
        self.state_keys, self.image_keys, self.state_dim = config.state_keys, config.image_keys, config.state_dim
        self.register_buffer("state_mean", torch.zeros(self.state_dim))
        self.register_buffer("state_std", torch.ones(self.state_dim))
        self.register_buffer("action_mean", torch.zeros(self.action_dim))
        self.register_buffer("action_std", torch.ones(self.action_dim))
        levels = config.action_levels or ((),) * self.action_dim
        self.continuous = [i for i, entry in enumerate(levels) if not entry]
        # plain values, not tensors: a policy loaded from weights is built on the meta device first
        self.choices = [(i, tuple(entry)) for i, entry in enumerate(levels) if entry]
        self.encoders = self.image_encoders()
        self.feature_dim = self.state_dim + sum(encoder.out.out_features for encoder in self.encoders.values())
        self.add_module(self.head_name, mlp([self.feature_dim, *config.hidden, self.head_outputs()]))

    def image_encoders(self) -> nn.ModuleDict:
        """Camera name -> encoder whose features join the state vector; none: an MLP sees the state alone."""
        return nn.ModuleDict()

    def head_outputs(self) -> int:
        """Per predicted step: one value per continuous action entry, one logit per level of each discrete one."""
        return self.chunk_size * (len(self.continuous) + sum(len(levels) for _, levels in self.choices))

    def config_dict(self) -> dict[str, Any]:
        return self.config.as_dict()

    def _state_vector(self, batch: dict[str, Any]) -> np.ndarray | torch.Tensor:
        parts = [batch[f"obs.{k}"].reshape(len(batch[f"obs.{k}"]), -1) for k in self.state_keys]
        if isinstance(parts[0], torch.Tensor):
            return torch.cat([p.float() for p in parts], dim=1)
        return np.concatenate([np.asarray(p, dtype=np.float64) for p in parts], axis=1)

    def fit_normalization(self, batch: dict[str, np.ndarray]) -> None:
        if self.state_keys:
            self.state_mean, self.state_std = mean_std(self._state_vector(batch))
        actions = np.asarray(batch["action"], dtype=np.float64).reshape(-1, self.action_dim)
        self.action_mean, self.action_std = mean_std(actions)

    def normalized_state(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if not self.state_keys:
            return None
        return (self._state_vector(batch) - self.state_mean) / self.state_std

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The head's input: each camera's encoder features, then the normalized state vector, (B, feature_dim)."""
        parts = [self.encoders[k](batch[f"obs.{k}"]) for k in self.encoders]
        state = self.normalized_state(batch)
        if state is not None:
            parts.append(state)
        return torch.cat(parts, dim=-1)

    def head_output(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        head = getattr(self, self.head_name)
        return head(self.features(batch)).reshape(len(next(iter(batch.values()))), self.chunk_size, -1)

    def split_output(self, raw: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The head's output -> (normalized continuous entries (B, chunk, C), each discrete entry's logits)."""
        parts = [len(self.continuous), *(len(levels) for _, levels in self.choices)]
        values, *logits = torch.split(raw, parts, dim=-1)
        return values, logits

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalized action chunks, (B, chunk_size, action_dim); a discrete entry is its likeliest level."""
        raw = self.head_output(batch)
        if not self.choices:
            return raw
        values, logits = self.split_output(raw)
        actions = raw.new_zeros((*raw.shape[:2], self.action_dim))
        actions[..., self.continuous] = values
        for (i, levels), entry_logits in zip(self.choices, logits, strict=True):
            chosen = torch.tensor(levels, device=raw.device)[entry_logits.argmax(dim=-1)]
            actions[..., i] = (chosen - self.action_mean[i]) / self.action_std[i]
        return actions

    @torch.no_grad()
    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        batch = {f"obs.{k}": torch.as_tensor(np.asarray(observation[k]))[None] for k in self.observation}
        chunk = self.predict(batch)[0] * self.action_std + self.action_mean
        return chunk.numpy().astype(np.float32)

    def observation_batch(self, observations: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        return {
            f"obs.{k}": torch.as_tensor(np.stack([np.asarray(o[k]) for o in observations])) for k in self.observation
        }

    @torch.no_grad()
    def act_batch(self, observations: list[dict[str, np.ndarray]]) -> np.ndarray:
        chunks = self.predict(self.observation_batch(observations)) * self.action_std + self.action_mean
        return chunks.numpy().astype(np.float32)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        target = batch["action"].float().reshape(-1, self.chunk_size, self.action_dim)
        if not self.choices:
            target = (target - self.action_mean) / self.action_std
            return ((self.head_output(batch) - target) ** 2).mean(dim=(1, 2))
        # Squared error on the continuous entries, cross-entropy on the discrete ones (target: the nearest level),
        # summed per step and averaged over the action entries.
        values, logits = self.split_output(self.head_output(batch))
        continuous = self.continuous
        normalized = (target[..., continuous] - self.action_mean[continuous]) / self.action_std[continuous]
        total = ((values - normalized) ** 2).sum(dim=-1)
        for (i, levels), entry_logits in zip(self.choices, logits, strict=True):
            nearest = (target[..., i, None] - torch.tensor(levels, device=target.device)).abs().argmin(dim=-1)
            flat = nn.functional.cross_entropy(entry_logits.flatten(0, 1), nearest.flatten(), reduction="none")
            total = total + flat.reshape(nearest.shape)
        return (total / self.action_dim).mean(dim=1)


class MLPConfig(NormalizedConfig):
    """The MLP sees the state vector alone (it leaves cameras out), so it needs a non-image observation."""

    config_name = "mlp"
    needs = "state"


class MLPPolicy(NormalizedPolicy):
    type_name: ClassVar[str] = "mlp"
    config_type: ClassVar[type[MLPConfig]] = MLPConfig
