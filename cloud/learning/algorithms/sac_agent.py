"""Soft actor-critic with human interventions (HIL-SERL / RLPD style) over the episode store.

The actor is a ``policies.sac_actor.SACActorPolicy`` (Gaussian, tanh-squashed into the action limits); the learner
publishes it like any policy and the edge samples from it (``explore``, as HIL-SERL's actor collects) or runs its
mean. Beside it: twin Q critics (LayerNorm MLPs, as RLPD uses against over-estimation on offline data) with
Polyak-averaged target copies, and an entropy temperature tuned towards ``target_entropy`` (default
``-action_dim``). Camera images reach the actor and the critics through a small CNN each (the critics' trained by
the critic loss, as in DrQ and SERL).

Data: transitions ``(s, a, r, s', terminal)`` come from consecutive committed steps of an episode
(``cloud.learning.sampler.load_steps``); a step that ended its episode with success is terminal (no bootstrap), one cut
by the time limit has no next observation and is left out. The online buffer is what the policy did itself
(kind ``online``); the demonstration buffer is what a person did (``intervention``, ``demo``, ``offline``). A
batch is ``demo_ratio`` demonstrations and the rest online (``cloud.learning.sampler``: exact counts, staleness weights
on the online buffer). The critic learns from interventions as ordinary transitions (the action taken is the
person's), so it values the corrections, and the actor is pulled towards them through the critic.

Under DistributedDataParallel (``wrap``) the actor's and the critics' gradients are averaged by DDP; the
temperature's gradient by an explicit all-reduce; the target networks then move identically on every rank.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Annotated

import numpy as np
import torch
from pydantic import Field, Strict, model_validator
from torch import nn

from hal.config import CodeConfig, Items, Name, invalid
from policies.cnn import ImageEncoder
from policies.sac_actor import SACActorPolicy, squashed_sample

Wrap = Callable[[nn.Module], nn.Module]


Positive = Annotated[float, Field(gt=0)]
Share = Annotated[float, Field(ge=0, le=1)]
ActionLimits = Annotated[tuple[Name, Items[float], Items[float]], Strict(False)]  # (dataset, low, high)


class SACConfig(CodeConfig):
    config_name = "sac"

    gamma: Annotated[float, Field(gt=0, lt=1)] = 0.97
    tau: Annotated[float, Field(gt=0, le=1)] = 0.005  # Polyak step of the target critics
    actor_lr: Positive = 3e-4
    critic_lr: Positive = 3e-4
    temperature_lr: Positive = 3e-4
    init_temperature: Positive = 0.1
    target_entropy: float | None = None  # None: -action_dim
    critic_hidden: Annotated[Items[Annotated[int, Field(ge=1)]], Field(min_length=1)] = (256, 256)
    # Weight of a behaviour-cloning term on the demonstration buffer's samples in the actor's loss (0: plain SAC).
    # It keeps the actor near what the person did where the critics still know little (as in TD3+BC, IBRL).
    bc_weight: Annotated[float, Field(ge=0)] = 1.0
    demo_ratio: Share = 0.5  # share of each batch from the demonstration buffer (when the sampler sets no ratios)
    # Robots sample from the published actor (as HIL-SERL's actor collects) instead of running its mean: on the
    # point-reach test this ended at 1.0 autonomous success in the last three versions, vs 0.85-1.0 without.
    explore: bool = True
    # Per-dataset action limits ((dataset, low, high), ...); otherwise the sim task's, otherwise the data's range.
    action_limits: Items[ActionLimits] = ()

    @model_validator(mode="after")
    def _low_below_high(self) -> SACConfig:
        for dataset, low, high in self.action_limits:
            if len(low) != len(high) or not all(h > lo for lo, h in zip(low, high, strict=True)):
                raise invalid(f"needs low < high per dimension, got {low} / {high}", "action_limits", dataset)
        return self

    def ratios(self) -> tuple[tuple[str, float], ...]:
        return (("online", 1.0 - self.demo_ratio), ("intervention+demo+offline", self.demo_ratio))

    def limits_for(self, dataset: str) -> tuple[list[float], list[float]] | None:
        for name, low, high in self.action_limits:
            if name == dataset:
                return [float(x) for x in low], [float(x) for x in high]
        return None


def known_action_limits(dataset: str) -> tuple[list[float], list[float]] | None:
    """The action limits of a simulated task named like the dataset (datasets are named by embodiment)."""
    from hal.reach_sim import REACH_TASKS
    from hal.sim import SIM_TASKS

    spec = SIM_TASKS[dataset].action if dataset in SIM_TASKS else None
    if spec is None and dataset in REACH_TASKS:
        spec = REACH_TASKS[dataset].action
    if spec is None or not spec.low or not spec.high:
        return None
    dim = int(np.prod(spec.shape))
    low = list(spec.low) * (dim if len(spec.low) == 1 else 1)
    high = list(spec.high) * (dim if len(spec.high) == 1 else 1)
    return [float(x) for x in low], [float(x) for x in high]


class TwinQ(nn.Module):
    """Two Q networks over (camera features, normalized state, action in [-1, 1]). The cameras go through the
    critics' own small CNNs (trained by the critic loss, as in DrQ and SERL; the actor has its own)."""

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        hidden: tuple[int, ...],
        cameras: dict[str, int] | None = None,
        channels: tuple[int, ...] | list[int] = (16, 32, 32),
        image_features: int = 64,
    ) -> None:
        """``cameras``: camera name -> channels of its images (none: state only)."""
        super().__init__()
        self.cameras = sorted(cameras or {})
        self.encoders = nn.ModuleDict(
            {k: ImageEncoder((cameras or {})[k], [int(c) for c in channels], int(image_features)) for k in self.cameras}
        )

        def q() -> nn.Sequential:
            layers: list[nn.Module] = []
            n_in = state_dim + action_dim + int(image_features) * len(self.cameras)
            for h in hidden:
                layers += [nn.Linear(n_in, int(h)), nn.LayerNorm(int(h)), nn.ReLU()]
                n_in = int(h)
            return nn.Sequential(*layers, nn.Linear(n_in, 1))

        self.q1, self.q2 = q(), q()

    def forward(
        self, state: torch.Tensor, images: dict[str, torch.Tensor], action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([*(self.encoders[k](images[k]) for k in self.cameras), state, action], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


class Temperature(nn.Module):
    def __init__(self, init: float) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.tensor(float(np.log(init)), dtype=torch.float32))

    def forward(self) -> torch.Tensor:
        return self.log_alpha.exp()


class _ActorSample(nn.Module):
    """``forward`` = a reparameterized sample, its log-probability and the mean action (all in [-1, 1] units):
    what DDP wraps for the actor's update, so every use of the actor in its loss goes through DDP's forward."""

    def __init__(self, actor: SACActorPolicy) -> None:
        super().__init__()
        self.actor = actor

    def forward(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, log_std = self.actor.gaussian(batch)
        action, logp = squashed_sample(mean, log_std, generator)
        return action, logp, torch.tanh(mean)


class SACAgent:
    """The actor, the critics and their targets, the temperature, and one optimizer each."""

    def __init__(self, actor: SACActorPolicy, config: SACConfig, wrap: Wrap | None = None) -> None:
        self.actor = actor
        self.config = config
        cameras = {k: int(actor.observation[k]["shape"][2]) for k in actor.image_keys}
        self.critic = TwinQ(
            actor.state_dim,
            actor.action_dim,
            config.critic_hidden,
            cameras,
            actor.config.channels,
            actor.config.image_features,
        )
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.temperature = Temperature(config.init_temperature)
        self.target_entropy = (
            float(config.target_entropy) if config.target_entropy is not None else -float(actor.action_dim)
        )
        # AdamW without decay is Adam; AdamW is what the learner's checkpoint restores.
        self.actor_optimizer = torch.optim.AdamW(actor.parameters(), lr=config.actor_lr, weight_decay=0.0)
        self.critic_optimizer = torch.optim.AdamW(self.critic.parameters(), lr=config.critic_lr, weight_decay=0.0)
        self.temperature_optimizer = torch.optim.AdamW(
            self.temperature.parameters(), lr=config.temperature_lr, weight_decay=0.0
        )
        self._wrap = wrap
        self._actor_model: nn.Module | None = None
        self._critic_model: nn.Module | None = None
        self.all_reduce_mean: Callable[[torch.Tensor], None] | None = None  # set by the distributed learner

    def modules(self) -> dict[str, nn.Module]:
        """What a checkpoint holds besides the actor."""
        return {"critic": self.critic, "critic_target": self.critic_target, "temperature": self.temperature}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"critic": self.critic_optimizer, "temperature": self.temperature_optimizer}

    def _models(self) -> tuple[nn.Module, nn.Module]:
        if self._actor_model is None or self._critic_model is None:
            wrap = self._wrap or (lambda m: m)
            self._actor_model, self._critic_model = wrap(_ActorSample(self.actor)), wrap(self.critic)
        return self._actor_model, self._critic_model

    def _critic_inputs(self, obs: dict[str, torch.Tensor], n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The normalized state (the actor's normalization; (n, 0) without one) and the camera images."""
        state = self.actor.normalized_state(obs)
        if state is None:
            state = torch.zeros(n, 0, device=self.actor.action_mean.device)
        return state, {k: obs[f"obs.{k}"] for k in self.actor.image_keys}

    def update(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, float]:
        """One gradient step of critics, actor and temperature on a batch of transitions.

        Keys: "obs.<name>" and "next.obs.<name>", "action" (robot units), "reward", "terminal" (float 0/1), and
        optionally "labelled" (1 where a person chose the action: the samples ``bc_weight`` applies to).
        """
        actor_model, critic_model = self._models()
        actor = self.actor
        obs = {k: v for k, v in batch.items() if k.startswith("obs.")}
        next_obs = {k.removeprefix("next."): v for k, v in batch.items() if k.startswith("next.obs.")}
        action = actor.to_unit(batch["action"])
        state, images = self._critic_inputs(obs, len(action))
        alpha = self.temperature().detach()
        with torch.no_grad():
            next_action, next_logp = actor.sample(next_obs, generator)
            target_q1, target_q2 = self.critic_target(*self._critic_inputs(next_obs, len(action)), next_action)
            soft_value = torch.minimum(target_q1, target_q2) - alpha * next_logp
            target = batch["reward"].float() + self.config.gamma * (1.0 - batch["terminal"].float()) * soft_value
        q1, q2 = critic_model(state, images, action)
        critic_loss = 0.5 * ((q1 - target) ** 2 + (q2 - target) ** 2).mean()
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()

        self.critic.requires_grad_(False)  # the actor's loss goes through the critics without training them
        try:
            new_action, logp, mean_action = actor_model(obs, generator)
            q1_pi, q2_pi = self.critic(state, images, new_action)
            actor_loss = (alpha * logp - torch.minimum(q1_pi, q2_pi)).mean()
            if self.config.bc_weight > 0 and "labelled" in batch:
                mask = batch["labelled"].float()
                bc = ((mean_action - action) ** 2).sum(-1)
                actor_loss = actor_loss + self.config.bc_weight * (bc * mask).sum() / mask.sum().clamp(min=1.0)
            self.actor_optimizer.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_optimizer.step()
        finally:
            self.critic.requires_grad_(True)

        temperature_loss = -(self.temperature.log_alpha * (logp.detach() + self.target_entropy)).mean()
        self.temperature_optimizer.zero_grad(set_to_none=True)
        temperature_loss.backward()
        if self.all_reduce_mean is not None:
            self.all_reduce_mean(self.temperature.log_alpha.grad)
        self.temperature_optimizer.step()

        with torch.no_grad():
            for target_p, p in zip(self.critic_target.parameters(), self.critic.parameters(), strict=True):
                target_p.lerp_(p, self.config.tau)
        return {
            "critic_loss": float(critic_loss.item()),
            "actor_loss": float(actor_loss.item()),
            "temperature": float(alpha.item()),
            "q": float(q1.mean().item()),
        }
