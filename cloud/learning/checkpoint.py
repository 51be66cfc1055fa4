"""The learner's checkpoint of one dataset: the weights and optimizer tensors as safetensors, the scalars as JSON.

The JSON (version, gradient steps so far, episodes at that version, optimizer hyperparameters) is written last by
rename and names the tensor file, so a checkpoint is whole or absent. Besides the published policy and its optimizer
an algorithm may save further modules and optimizers by name (SAC: the critics, their targets, the temperature).
Loading reads a local file only: never bytes from the wire, never pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from cloud.data.files import write_atomically
from policies.base import Policy
from policies.factory import make_policy


@dataclass
class Checkpoint:
    version: int
    total_steps: int
    episodes_at_version: int
    policy: Policy
    optimizer: torch.optim.Optimizer
    algorithm: str = "hg-dagger"
    module_states: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # SAC: critics, temperature
    optimizer_states: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows_at_version: int = 0  # committed rows the version's round saw (0 in checkpoints from before it was kept)
    origin: str = ""  # the starting weights (``--init``) its policy was first trained from; "": a random start


def _optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in state["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"type": type(optimizer).__name__, "param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(prefix: str, tensors: dict[str, torch.Tensor], meta: dict) -> dict[str, Any]:
    if meta["type"] != "AdamW":
        raise ValueError(f"checkpoint optimizer {meta['type']!r}: only AdamW is known")
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix):
            index, key = name[len(prefix) :].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


class LearnerCheckpoint:
    """Saves and loads one dataset's learner state in ``directory`` (see the module docstring)."""

    META = "checkpoint.json"

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def save(
        self,
        version: int,
        total_steps: int,
        episodes_at_version: int,
        policy: Policy,
        optimizer: torch.optim.Optimizer,
        algorithm: str = "hg-dagger",
        modules: dict[str, nn.Module] | None = None,
        optimizers: dict[str, torch.optim.Optimizer] | None = None,
        rows: int = 0,
        origin: str = "",
    ) -> None:
        """``modules``/``optimizers``: further state by name (SAC's critics, temperature and their optimizers)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"policy.{k}": v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
        optimizer_tensors, optimizer_meta = _optimizer_tensors("optimizer.", optimizer)
        tensors.update(optimizer_tensors)
        for name, module in (modules or {}).items():
            tensors.update(
                {f"modules.{name}.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            )
        extra_optimizers = {}
        for name, extra in (optimizers or {}).items():
            extra_tensors, extra_optimizers[name] = _optimizer_tensors(f"optimizers.{name}.", extra)
            tensors.update(extra_tensors)
        tensor_file = f"state-v{version:06d}.safetensors"
        write_atomically(self.directory / tensor_file, safetensors.torch.save(tensors))
        meta = {
            "version": version,
            "total_steps": total_steps,
            "episodes_at_version": episodes_at_version,
            "rows_at_version": rows,
            "origin": origin,
            "algorithm": algorithm,
            "tensors": tensor_file,
            "policy_type": policy.type_name,
            "policy_config": policy.config_dict(),
            "optimizer_type": optimizer_meta["type"],
            "optimizer_param_groups": optimizer_meta["param_groups"],
            "optimizer_scalars": optimizer_meta["scalars"],
            "modules": sorted(modules or {}),
            "optimizers": extra_optimizers,
        }
        write_atomically(self.directory / self.META, json.dumps(meta).encode())  # the commit point
        for old in self.directory.glob("state-v*.safetensors"):
            if old.name != tensor_file:
                old.unlink(missing_ok=True)

    def load(self) -> Checkpoint | None:
        """The saved state, or None when there is none; ValueError when it is there but does not fit."""
        try:
            meta = json.loads((self.directory / self.META).read_bytes())
        except FileNotFoundError:
            return None
        tensors = safetensors.torch.load_file(self.directory / meta["tensors"])  # a local file, never wire bytes
        policy = make_policy(meta["policy_type"], meta["policy_config"])
        prefix = "policy."
        policy.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)
        optimizer = torch.optim.AdamW(policy.parameters())
        main = {"type": meta["optimizer_type"], "param_groups": meta["optimizer_param_groups"]}
        optimizer.load_state_dict(
            _optimizer_state("optimizer.", tensors, {**main, "scalars": meta["optimizer_scalars"]})
        )
        module_states = {}
        for name in meta.get("modules", []):
            head = f"modules.{name}."
            module_states[name] = {k[len(head) :]: v for k, v in tensors.items() if k.startswith(head)}
        optimizer_states = {
            name: _optimizer_state(f"optimizers.{name}.", tensors, extra)
            for name, extra in meta.get("optimizers", {}).items()
        }
        return Checkpoint(
            meta["version"],
            meta["total_steps"],
            meta["episodes_at_version"],
            policy,
            optimizer,
            meta.get("algorithm", "hg-dagger"),
            module_states,
            optimizer_states,
            meta.get("rows_at_version", 0),
            meta.get("origin", ""),
        )
