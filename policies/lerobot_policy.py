"""Any lerobot policy (ACT, diffusion, SmolVLA, pi0 / pi05, ...) behind fleetloop's Policy interface.

One adapter, three ways in:

- ``LerobotPolicy(observation, action_dim, "act", {"dim_model": 32, ...})``: a fresh (random) lerobot model built
  through lerobot's own factory (``make_policy_config`` / ``get_policy_class``) with its own pre- and
  post-processors (``make_pre_post_processors``); input and output features come from fleetloop's observation
  spec: uint8 (H, W, C) images become ``observation.images.<name>`` (C, H, W) floats in [0, 1], the other
  (float) observations are concatenated, in name order, into ``observation.state``.
- ``LerobotPolicy.from_pretrained_dir(path)``: a local lerobot ``pretrained_model`` directory (config.json,
  model.safetensors, the processor JSON and safetensors files); nothing is downloaded.
- ``policies.weights.policy_from_bytes``: an edge rebuilds the exact policy from a safetensors blob alone.

What travels in the bytes: the metadata config holds the lerobot type, lerobot's own JSON encoding of its
``PreTrainedConfig`` (draccus, as ``config.json``), fleetloop's observation spec and feature mapping, and both
processor pipelines' JSON configs (lerobot's ``PolicyProcessorPipeline.get_config``). The tensors hold the model
under ``model.`` and every processor step's state (the normalization statistics) under ``processors.``, so the
statistics are part of the checksummed weights and a rebuilt policy normalizes exactly as the original.

VLAs (SmolVLA): the architecture and the language tokenizer come from the VLM named by ``vlm_model_name``, which
lerobot reads (config.json, tokenizer and processor files) even with ``load_vlm_weights=False``. It names a local
model directory by absolute path inside the operator's model roots (``policies.model_roots``); the path travels in
the bytes (the files do not), so every host that rebuilds the policy (the cloud's remote-inference server) must have
that directory under its own roots. The VLM's weights always
travel in the tensors: a rebuilt policy never loads them from ``vlm_model_name``. The language instruction is the
policy's ``task``. transformers' non-persistent buffers (rotary embeddings' ``inv_freq``) are not in the weights:
after a meta-device rebuild they are recomputed from their module's config.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from policies.base import Policy
from policies.lerobot_config import LOAD_VLM_WEIGHTS, NO_DOWNLOAD, decode_lerobot_config
from policies.lerobot_processors import ProcessorConfigError, check_processor_config
from policies.lerobot_trust import check_config

# A feature or action dimension that barely varies in the data would otherwise blow up when it does vary.
MIN_SCALE = 1e-2
MAX_STAT_FRAMES = 200  # image statistics come from at most about this many frames
OBS_STATE = "observation.state"
OBS_ENV_STATE = "observation.environment_state"
OBS_IMAGES_PREFIX = "observation.images."
ACTION = "action"
# Policies whose model takes observations with a time axis (B, n_obs_steps, ...) even for one step.
_OBSERVATION_HISTORY_TYPES = {"diffusion"}


def is_image(spec: dict[str, Any]) -> bool:
    """uint8 arrays of shape (H, W, C) are camera images; everything else is a state vector."""
    return spec["dtype"] == "uint8" and len(spec["shape"]) == 3


def default_inputs(observation: dict[str, dict[str, Any]], environment_state: Sequence[str] = ()) -> dict:
    """lerobot input key -> the fleetloop observation names that feed it (several names are concatenated)."""
    unknown = set(environment_state) - set(observation)
    if unknown:
        raise ValueError(f"environment_state names {sorted(unknown)} are not observations: {sorted(observation)}")
    inputs: dict[str, list[str]] = {}
    for name in sorted(observation):
        if is_image(observation[name]):
            inputs[OBS_IMAGES_PREFIX + name] = [name]
    states = [n for n in sorted(observation) if not is_image(observation[n]) and n not in environment_state]
    if states:
        inputs[OBS_STATE] = states
    if environment_state:
        inputs[OBS_ENV_STATE] = list(environment_state)
    return inputs


def _features(observation: dict, inputs: dict[str, list[str]], action_dim: int) -> tuple[dict, dict]:
    from lerobot.configs import FeatureType, PolicyFeature

    input_features = {}
    for key, names in inputs.items():
        missing = [n for n in names if n not in observation]
        if missing:
            raise ValueError(f"input {key!r} names observations {missing} that the spec lacks")
        specs = [observation[n] for n in names]
        if any(is_image(s) for s in specs):
            if len(specs) != 1:
                raise ValueError(f"image input {key!r} must take exactly one observation, got {names}")
            h, w, c = specs[0]["shape"]
            input_features[key] = PolicyFeature(FeatureType.VISUAL, (int(c), int(h), int(w)))
        else:
            kind = FeatureType.ENV if key == OBS_ENV_STATE else FeatureType.STATE
            input_features[key] = PolicyFeature(kind, (sum(int(np.prod(s["shape"])) for s in specs),))
    return input_features, {ACTION: PolicyFeature(FeatureType.ACTION, (int(action_dim),))}


def preload() -> None:
    """Imports what rebuilding a lerobot policy needs. Importing it takes seconds and holds the GIL in long
    stretches (extension modules load under it): done while a control loop ticks, it stalls that loop."""
    import lerobot.policies.factory  # noqa: F401
    import lerobot.processor  # noqa: F401


def check_lerobot_config(lerobot_type: str, fields: dict[str, Any]) -> None:
    """ValueError unless ``fields`` make a config of ``lerobot_type`` (checked without building the model)."""
    import lerobot.policies.factory  # noqa: F401 (registers lerobot's policy config types)

    decode_lerobot_config(lerobot_type, {**fields, "device": fields.get("device", "cpu")})


def _encode_config(config: Any) -> dict[str, Any]:
    import draccus
    from lerobot.configs import PreTrainedConfig

    # Through JSON once, so tuples and enums take the form they have in config.json.
    encoded = json.loads(json.dumps(draccus.encode(config, PreTrainedConfig)))
    encoded.pop("type", None)
    return encoded


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


class _ProcessorState(nn.Module):
    """Puts the processor pipelines' state (e.g. normalization statistics) into the module's state_dict.

    Keys: ``<prefix><pre|post>.<state key>.<tensor name>``. Loading hands the tensors to the pipelines'
    own ``load_state_dict``, which checks that every step with state gets exactly its state.
    """

    def __init__(self, owner: LerobotPolicy) -> None:
        super().__init__()
        self._owner = [owner]  # a list, so the owner is not registered as a submodule (no cycle)

    def _pipelines(self) -> dict[str, Any]:
        owner = self._owner[0]
        return {"pre": owner.preprocessor, "post": owner.postprocessor}

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        for side, pipeline in self._pipelines().items():
            for state_key, tensors in pipeline.state_dict().items():
                for name, tensor in tensors.items():
                    destination[f"{prefix}{side}.{state_key}.{name}"] = tensor.detach().cpu()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        grouped: dict[str, dict[str, dict[str, torch.Tensor]]] = {"pre": {}, "post": {}}
        for key, tensor in state_dict.items():
            if not key.startswith(prefix):
                continue
            side, _, rest = key[len(prefix) :].partition(".")
            state_key, _, name = rest.partition(".")
            if side not in grouped or not state_key or not name:
                unexpected_keys.append(key)
                continue
            if not torch.isfinite(tensor).all():
                error_msgs.append(f"processor state {key} holds NaN or infinite values")
                continue
            grouped[side].setdefault(state_key, {})[name] = tensor
        for side, pipeline in self._pipelines().items():
            try:
                pipeline.load_state_dict(grouped[side])
            except KeyError as exc:
                if grouped[side]:
                    error_msgs.append(f"{side}processor state does not fit its pipeline: {exc}")
                else:  # none given at all (e.g. a partial update): missing, which only strict loading refuses
                    missing_keys.append(f"{prefix}{side}.* (the {side}processor state: {exc})")


class LerobotPolicy(Policy):
    """A lerobot ``PreTrainedPolicy`` plus its pre- and post-processors, acting on fleetloop observations.

    Config: ``observation`` {name: {"shape", "dtype"}}, ``action_dim``, ``lerobot_type`` ("act", "diffusion",
    "smolvla", "pi0", ...), ``lerobot_config`` (fields of that type's config, as in its config.json; missing
    fields take lerobot's defaults), ``inputs`` (lerobot input key -> observation names; by default from the
    spec, ``environment_state`` names going to ``observation.environment_state``), ``task`` (the language
    instruction for VLA policies), ``preprocessor`` / ``postprocessor`` (pipeline JSON configs; by default the
    policy type's own). ``chunk_size`` is derived: the number of actions one ``act`` returns.
    """

    type_name: ClassVar[str] = "lerobot"

    def __init__(
        self,
        observation: dict[str, dict[str, Any]],
        action_dim: int,
        lerobot_type: str,
        lerobot_config: dict[str, Any] | Any | None = None,
        inputs: dict[str, list[str]] | None = None,
        environment_state: Sequence[str] = (),
        task: str | None = None,
        preprocessor: dict[str, Any] | None = None,
        postprocessor: dict[str, Any] | None = None,
        chunk_size: int | None = None,
        *,
        model: nn.Module | None = None,
        processors: tuple[Any, Any] | None = None,
    ) -> None:
        """``model`` and ``processors``: already built and loaded ones (``from_pretrained_dir``)."""
        super().__init__()
        from lerobot.configs import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors

        self.observation = {k: {"shape": list(v["shape"]), "dtype": str(v["dtype"])} for k, v in observation.items()}
        self.action_dim = int(action_dim)
        self.lerobot_type = str(lerobot_type)
        self.task = task
        self.inputs = {k: list(v) for k, v in (inputs or default_inputs(self.observation, environment_state)).items()}
        input_features, output_features = _features(self.observation, self.inputs, self.action_dim)

        if isinstance(lerobot_config, PreTrainedConfig):
            config = lerobot_config
        else:
            fields = dict(lerobot_config or {})
            fields.setdefault("device", "cpu")
            # Random weights unless asked otherwise: lerobot's ACT and diffusion default to downloading ImageNet
            # ResNet weights, and nothing here may reach the network by default.
            fields.setdefault(NO_DOWNLOAD, None)
            # Through lerobot's JSON form once more: draccus reads some defaults back in another type (ACT's
            # ``replace_final_stride_with_dilation: int = False`` comes back as 0), and a policy rebuilt from its
            # bytes must encode to the very same config.
            config = decode_lerobot_config(
                self.lerobot_type, _encode_config(decode_lerobot_config(self.lerobot_type, fields))
            )
        if config.type != self.lerobot_type:
            raise ValueError(f"lerobot_config is a {config.type!r} config, not {self.lerobot_type!r}")
        # The spec decides the features; a config that names others was made for another robot.
        for what, given, derived in (
            ("input", config.input_features, input_features),
            ("output", config.output_features, output_features),
        ):
            if given and given != derived:
                raise ValueError(f"lerobot_config's {what} features {given} do not match the spec's {derived}")
        config.input_features, config.output_features = input_features, output_features
        self.config = config

        self.model = model if model is not None else get_policy_class(self.lerobot_type)(config)
        if processors is not None:
            self.preprocessor, self.postprocessor = processors
        elif preprocessor is not None and postprocessor is not None:
            self.preprocessor, self.postprocessor = self._pipelines_from_config(preprocessor, postprocessor)
        else:
            self.preprocessor, self.postprocessor = make_pre_post_processors(config)
        self.processors = _ProcessorState(self)
        self.register_load_state_dict_post_hook(_materialize_after_load)

        self.history = self.lerobot_type in _OBSERVATION_HISTORY_TYPES or config.n_obs_steps > 1
        self.chunk_size = int(self._chunk_length())
        if chunk_size is not None and int(chunk_size) != self.chunk_size:
            raise ValueError(f"chunk_size {chunk_size} does not match the lerobot config's {self.chunk_size}")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LerobotPolicy:
        """The policy a config from data describes, checked first (``policies.lerobot_trust.check_config``)."""
        return cls(**check_config(config))

    @staticmethod
    def _pipelines_from_config(preprocessor: dict, postprocessor: dict) -> tuple[Any, Any]:
        """Both pipelines from their JSON configs, which may name only lerobot's own registered steps."""
        from lerobot.processor import PolicyProcessorPipeline
        from lerobot.processor.converters import (
            batch_to_transition,
            policy_action_to_transition,
            transition_to_batch,
            transition_to_policy_action,
        )

        for side, config in (("preprocessor", preprocessor), ("postprocessor", postprocessor)):
            try:
                check_processor_config(config)
            except ProcessorConfigError as err:
                raise ValueError(f"{side}.{err}") from None
        return (
            PolicyProcessorPipeline.from_config(
                preprocessor, to_transition=batch_to_transition, to_output=transition_to_batch
            ),
            PolicyProcessorPipeline.from_config(
                postprocessor, to_transition=policy_action_to_transition, to_output=transition_to_policy_action
            ),
        )

    def _chunk_length(self) -> int:
        """How many actions one ``act`` returns: the steps lerobot would execute from one prediction."""
        for name in ("n_action_steps", "chunk_size"):
            value = getattr(self.config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return 1

    # ---- config -------------------------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        lerobot_config = _encode_config(self.config)
        if lerobot_config.get(NO_DOWNLOAD) is not None:
            # The backbone's weights travel in the tensors: an edge rebuilding this policy never fetches them.
            lerobot_config[NO_DOWNLOAD] = None
        if lerobot_config.get(LOAD_VLM_WEIGHTS):
            # Likewise a VLA's backbone (SmolVLA): rebuilt from the VLM's config alone, its weights come from here.
            lerobot_config[LOAD_VLM_WEIGHTS] = False
        return {
            "observation": self.observation,
            "action_dim": self.action_dim,
            "chunk_size": self.chunk_size,
            "lerobot_type": self.lerobot_type,
            "lerobot_config": lerobot_config,
            "inputs": self.inputs,
            "task": self.task,
            # Configs as they are now: a step lists its state file only while it has state (e.g. fitted stats).
            "preprocessor": _jsonable(self.preprocessor.get_config()),
            "postprocessor": _jsonable(self.postprocessor.get_config()),
        }

    @classmethod
    def from_pretrained_dir(
        cls,
        path: str | Path,
        observation: dict[str, dict[str, Any]] | None = None,
        inputs: dict[str, list[str]] | None = None,
        task: str | None = None,
    ) -> LerobotPolicy:
        """Loads a local lerobot ``pretrained_model`` directory (never the hub: the path must be a directory), every
        file checked as hostile input before anything in it is built (``policies.pretrained_checks``).

        ``observation``/``inputs``: fleetloop's observation spec and how it feeds the model's input features; by
        default one observation per feature, named after the feature (``observation.images.front`` <- "front",
        ``observation.state`` <- "state", ``observation.image`` <- "image"), images uint8 (H, W, C).
        """
        from lerobot.configs import FeatureType

        from policies.pretrained_checks import build_checked, read_config

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a lerobot pretrained_model directory (no config.json)")
        config = read_config(path)
        if observation is None or inputs is None:
            observation, inputs = {}, {}
            for key, feature in config.input_features.items():
                name = key.removeprefix(OBS_IMAGES_PREFIX).removeprefix("observation.")
                if feature.type is FeatureType.VISUAL:
                    c, h, w = feature.shape
                    observation[name] = {"shape": [h, w, c], "dtype": "uint8"}
                else:
                    observation[name] = {"shape": list(feature.shape), "dtype": "float32"}
                inputs[key] = [name]
        return build_checked(cls, path, config, observation, inputs, task)

    # ---- observations -------------------------------------------------------------------------------------
    def _lerobot_batch(self, observations: dict[str, Any], batched: bool) -> dict[str, Any]:
        """fleetloop arrays ("obs.<name>" when ``batched``) -> lerobot keys; images to float (C, H, W) in [0, 1]."""
        batch: dict[str, Any] = {}
        for key, names in self.inputs.items():
            values = [_tensor(observations[f"obs.{n}" if batched else n]) for n in names]
            if key.startswith("observation.image"):
                image = values[0]
                batch[key] = image.movedim(-1, -3).to(torch.float32) / 255.0
            else:
                lead = values[0].shape[:1] if batched else ()
                batch[key] = torch.cat([v.reshape(*lead, -1).to(torch.float32) for v in values], dim=-1)
        if self.task is not None:
            n = len(next(iter(batch.values()))) if batched else 1
            batch["task"] = [self.task] * n if batched else self.task
        return batch

    def _with_history(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Adds the observation time axis: the current observation repeated ``n_obs_steps`` times (as lerobot
        fills its observation queue at an episode's start)."""
        if not self.history:
            return batch
        steps = self.config.n_obs_steps
        return {
            k: (v.unsqueeze(1).expand(-1, steps, *v.shape[1:]) if k.startswith("observation.") else v)
            for k, v in batch.items()
        }

    # ---- acting -------------------------------------------------------------------------------------------
    def reset(self) -> None:
        self.model.reset()

    @torch.no_grad()
    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        """(chunk_size, action_dim) float32 in the robot's action units, for one raw observation."""
        batch = self._with_history(self.preprocessor(self._lerobot_batch(observation, batched=False)))
        chunk = self.model.predict_action_chunk(batch)[:, : self.chunk_size]
        chunk = self.postprocessor(chunk)
        return chunk[0].detach().to("cpu", torch.float32).numpy()

    @torch.no_grad()
    def act_batch(self, observations: list[dict[str, np.ndarray]]) -> np.ndarray:
        """(B, chunk_size, action_dim): several robots' observations in one forward pass (remote inference)."""
        names = {n for names in self.inputs.values() for n in names}
        stacked = {f"obs.{n}": np.stack([np.asarray(o[n]) for o in observations]) for n in names}
        batch = self._with_history(self.preprocessor(self._lerobot_batch(stacked, batched=True)))
        chunks = self.model.predict_action_chunk(batch)[:, : self.chunk_size]
        chunks = self.postprocessor(chunks)
        return chunks.detach().to("cpu", torch.float32).numpy()

    # ---- training -----------------------------------------------------------------------------------------
    def action_offsets(self) -> list[int]:
        """The steps (relative to the observation) of the action sequence the model trains on."""
        offsets = self.config.action_delta_indices
        return list(offsets) if offsets is not None else [0]

    def chunk_dataset(self, dataset: dict[str, np.ndarray], episode_index: np.ndarray) -> dict[str, np.ndarray]:
        """Per-step "action" (N, action_dim) -> action sequences (N, T, action_dim) and "action_is_pad" (N, T).

        Consecutive steps of the same episode (rows in time order) fill the sequence, as lerobot's dataset does
        with ``action_delta_indices``; steps beyond the episode repeat its first or last action and are padding.
        """
        actions = np.asarray(dataset["action"], dtype=np.float32).reshape(len(dataset["action"]), self.action_dim)
        episode_index = np.asarray(episode_index)
        n = len(actions)
        offsets = np.asarray(self.action_offsets())
        rows = np.arange(n)[:, None] + offsets[None, :]
        starts = np.searchsorted(episode_index, episode_index, side="left")[:, None] if n else np.zeros((0, 1))
        ends = np.searchsorted(episode_index, episode_index, side="right")[:, None] - 1 if n else np.zeros((0, 1))
        if n and np.any(np.diff(episode_index) < 0):
            raise ValueError("chunk_dataset needs rows grouped by episode in time order (sorted episode_index)")
        pad = (rows < starts) | (rows > ends)
        rows = np.clip(rows, starts, ends).astype(np.int64)
        return {**dataset, ACTION: actions[rows], "action_is_pad": pad}

    def fit_normalization(self, batch: dict[str, np.ndarray]) -> None:
        """Statistics (mean, std, min, max, quantiles) of every input and the action, into the processors."""
        from lerobot.processor.normalize_processor import _NormalizationMixin

        n = len(batch[ACTION])
        stats: dict[str, dict[str, np.ndarray]] = {}
        for key, names in self.inputs.items():
            if key.startswith("observation.image"):
                pixels = np.asarray(batch[f"obs.{names[0]}"])
                pixels = pixels[:: max(1, len(pixels) // MAX_STAT_FRAMES)]  # evenly spaced frames are plenty
                channels = pixels.reshape(-1, pixels.shape[-1]).astype(np.float64) / 255.0
                stats[key] = {k: v.reshape(-1, 1, 1) for k, v in _stats(channels).items()}
            else:
                parts = [np.asarray(batch[f"obs.{name}"], dtype=np.float64).reshape(n, -1) for name in names]
                stats[key] = _stats(np.concatenate(parts, axis=1))
        stats[ACTION] = _stats(np.asarray(batch[ACTION], dtype=np.float64).reshape(-1, self.action_dim))
        for pipeline in (self.preprocessor, self.postprocessor):
            for step in pipeline.steps:
                if isinstance(step, _NormalizationMixin):
                    step.stats = {k: v for k, v in stats.items() if k in step.features}
                    step._stats_explicitly_provided = False
                    step.to(device=step.device, dtype=step.dtype)  # rebuilds its tensors from ``stats``

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The lerobot model's own training loss on a fleetloop batch, shape (B,).

        "action" is (B, T, action_dim) sequences (``chunk_dataset``; "action_is_pad" optional) or (B, action_dim)
        single steps; a single step is repeated over the sequence with every other step marked as padding (ACT
        masks padding out of its loss; diffusion, unless ``do_mask_loss_for_padding``, learns a held action).
        lerobot reduces its loss over the batch, so every sample carries the batch mean.
        """
        actions = batch[ACTION].to(torch.float32)
        n = len(actions)
        offsets = self.action_offsets()
        if actions.ndim == 2:
            actions = actions[:, None, :].expand(n, len(offsets), self.action_dim)
            pad = torch.ones(n, len(offsets), dtype=torch.bool)
            pad[:, offsets.index(0) if 0 in offsets else 0] = False
        else:
            if actions.shape[1:] != (len(offsets), self.action_dim):
                raise ValueError(f"action sequences {tuple(actions.shape)} do not fit ({len(offsets)}, action_dim)")
            pad = batch.get("action_is_pad", torch.zeros(actions.shape[:2], dtype=torch.bool)).to(torch.bool)
        lerobot_batch = self._lerobot_batch(batch, batched=True)
        lerobot_batch[ACTION] = actions
        lerobot_batch["action_is_pad"] = pad
        lerobot_batch = self._with_history(self.preprocessor(lerobot_batch))
        loss, _ = self.model.forward(lerobot_batch)
        return loss.reshape(()).expand(n)


def _tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    array = np.asarray(value)
    # Arrays decoded from the wire are read-only views of the message: torch wants memory it may write.
    return torch.as_tensor(array if array.flags.writeable else array.copy())


def _stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Per-column statistics of (N, D) values, named as lerobot names them (mean, std, min, max, q01, q99,
    q10, q90); std and every range are at least MIN_SCALE wide, so a column that never varied does not explode."""
    out = {"mean": values.mean(axis=0), "std": np.maximum(values.std(axis=0), MIN_SCALE)}
    ranges = {
        ("min", "max"): (values.min(axis=0), values.max(axis=0)),
        ("q01", "q99"): (np.quantile(values, 0.01, axis=0), np.quantile(values, 0.99, axis=0)),
        ("q10", "q90"): (np.quantile(values, 0.10, axis=0), np.quantile(values, 0.90, axis=0)),
    }
    for (low_name, high_name), (low, high) in ranges.items():
        centre, half = (low + high) / 2, np.maximum((high - low) / 2, MIN_SCALE / 2)
        out[low_name], out[high_name] = centre - half, centre + half
    return {k: v.astype(np.float32) for k, v in out.items()}


def _meta_attributes(module: nn.Module) -> list[str]:
    """Tensors left on the meta device: parameters, buffers, and plain tensor attributes of any submodule."""
    still = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    for name, sub in module.named_modules():
        still += [f"{name}.{k}" for k, v in vars(sub).items() if isinstance(v, torch.Tensor) and v.is_meta]
    return still


def _rebuild_non_persistent_buffers(sub: nn.Module) -> None:
    """Buffers that are no part of the weights (``persistent=False``), e.g. transformers' rotary embeddings'
    ``inv_freq``, are computed in ``__init__`` from a config: a fresh CPU instance built from the module's own
    ``config`` gives them back. A module without a config is left as it is (and named by the final check)."""
    names = [n for n in sub._non_persistent_buffers_set if isinstance(sub._buffers.get(n), torch.Tensor)]
    if not any(sub._buffers[n].is_meta for n in names) or getattr(sub, "config", None) is None:
        return
    try:
        with torch.device("cpu"):
            fresh = type(sub)(sub.config)
    except (TypeError, ValueError):  # built some other way: left for the final check to name
        return
    for n in names:
        if sub._buffers[n].is_meta:
            sub._buffers[n] = fresh._buffers[n]


# Plain tensor attributes (no parameter, no buffer) computed from Python values in a lerobot module's __init__:
# SmolVLA's image special-token ids (used with ``add_image_special_tokens``).
_CONSTANT_TENSORS = {
    "global_image_start_token": lambda m: torch.tensor([m.fake_image_token, m.global_image_token], dtype=torch.long),
    "image_end_token": lambda m: torch.tensor([m.fake_image_token], dtype=torch.long),
}


def _materialize_after_load(module: LerobotPolicy, incompatible_keys: Any) -> None:
    """After weights replace a meta-device build (``policy_from_bytes``), rebuild what is no parameter or buffer.

    diffusers' noise schedulers keep plain tensors (betas, alphas) that a meta build leaves on the meta device:
    they are rebuilt from their config on the CPU. Non-persistent buffers (transformers' rotary embeddings, as in
    SmolVLA) are recomputed from their module's config, and SmolVLA's token-id tensors from its token ids.
    Anything else left on the meta device is an error that names it.
    """
    for sub in module.model.modules():
        scheduler = getattr(sub, "noise_scheduler", None)
        alphas = getattr(scheduler, "alphas_cumprod", None)
        if isinstance(alphas, torch.Tensor) and alphas.is_meta:
            with torch.device("cpu"):
                sub.noise_scheduler = type(scheduler).from_config(scheduler.config)
        _rebuild_non_persistent_buffers(sub)
        for name, rebuild in _CONSTANT_TENSORS.items():
            value = getattr(sub, name, None)
            if isinstance(value, torch.Tensor) and value.is_meta:
                setattr(sub, name, rebuild(sub))
    still = _meta_attributes(module)
    if still and not incompatible_keys.missing_keys:  # missing keys are reported by load_state_dict itself
        raise RuntimeError(f"lerobot policy tensors not in the weights, left unmaterialized: {still[:5]}")
