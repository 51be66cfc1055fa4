"""lerobot's reward classifier (``lerobot.rewards.classifier.Classifier``) as a fleetloop policy type: camera frames
in, the probability that the task has succeeded out. The learner trains it on labelled frames and publishes it like
any policy (``<dataset>.reward``); an edge loads it from the same bytes (``edge.outcome.OutcomeJudge``).

lerobot builds the classifier's frozen CNN encoder with ``AutoModel.from_pretrained(model_name,
trust_remote_code=True)`` (``lerobot/resnet10`` from the hub). Here the encoder is a transformers ``ResNetModel``
built from a checked ``ResNetConfig`` (``ClassifierEncoder``; the default has the layout of a ResNet-10:
64-128-256-512 channels, one basic block per stage) with random weights that the published tensors then replace:
nothing is downloaded, no remote code runs, and the weights file alone rebuilds the classifier on any edge. The rest
is lerobot's own class and methods (spatial embeddings, head, ``predict``). As in lerobot, the encoder and its
spatial embedding run under ``no_grad``: training moves the head. The encoder stays in eval mode while training,
so its batch norms use the same statistics at training and at inference.

Images are scaled to [0, 1], resized to the size at which the encoder's last stage is 4x4 (lerobot's spatial
embedding expects that: 128 px for the ResNet-10 layout) and normalized per channel with the training frames'
mean and std (lerobot's ``MEAN_STD`` for visual features, kept here as buffers instead of a processor pipeline).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from hal.config import ConfigModel, Items, Name, invalid
from policies.base import Policy, PolicyConfig, Width
from policies.mlp import MIN_STD, ObservationSpec, is_image

# The frames' label in a training batch: 1.0 where the task had succeeded, 0.0 where not.
LABEL = "label"
# The lerobot feature prefix of camera images (lerobot.utils.constants.OBS_IMAGE).
_OBS_IMAGE = "observation.image"
STATS_FRAMES = 256  # frames per camera that the normalization statistics are computed from, at most
_Stage = Annotated[int, Field(ge=1, le=2048)]


class ClassifierEncoder(ConfigModel):
    """The frozen CNN encoder: a transformers ResNet; bounded so a weights file cannot ask for a huge one."""

    embedding_size: Annotated[int, Field(ge=1, le=1024)] = 64
    hidden_sizes: Annotated[Items[_Stage], Field(min_length=1, max_length=5)] = (64, 128, 256, 512)
    depths: Annotated[Items[Annotated[int, Field(ge=1, le=8)]], Field(min_length=1, max_length=5)] = (1, 1, 1, 1)
    layer_type: Literal["basic", "bottleneck"] = "basic"

    @model_validator(mode="after")
    def _stages_match(self) -> ClassifierEncoder:
        if len(self.depths) != len(self.hidden_sizes):
            why = f"one depth per stage: {len(self.hidden_sizes)} hidden sizes but {len(self.depths)} depths"
            raise invalid(why, "depths")
        return self

    @property
    def input_size(self) -> int:
        """Pixels per side at which the last stage is 4x4: the stem divides by 4, each later stage by 2."""
        return 16 * 2 ** (len(self.hidden_sizes) - 1)

    def build(self, channels: int) -> nn.Module:
        from transformers import ResNetConfig, ResNetModel

        config = ResNetConfig(
            num_channels=channels,
            embedding_size=self.embedding_size,
            hidden_sizes=list(self.hidden_sizes),
            depths=list(self.depths),
            layer_type=self.layer_type,
        )
        return ResNetModel(config)


class RewardClassifierConfig(PolicyConfig):
    """The cameras it sees (uint8 (H, W, C) images of one channel count) and lerobot's classifier fields."""

    config_name = "reward_classifier"

    observation: Annotated[dict[Name, ObservationSpec], Field(min_length=1, max_length=8)]
    encoder: ClassifierEncoder = ClassifierEncoder()
    hidden_dim: Width = 256
    latent_dim: Width = 256
    image_embedding_pooling_dim: Annotated[int, Field(ge=1, le=64)] = 8
    dropout_rate: Annotated[float, Field(ge=0, lt=1)] = 0.1

    @model_validator(mode="after")
    def _cameras_only(self) -> RewardClassifierConfig:
        for name, spec in self.observation.items():
            if not is_image(spec.model_dump()):
                raise invalid(
                    f"the classifier sees camera images only (uint8 H, W, C), got {spec}", "observation", name
                )
        channels = {spec.shape[2] for spec in self.observation.values()}
        if len(channels) > 1 or max(channels) > 4:
            raise invalid(f"every camera needs the same 1-4 channels, got {sorted(channels)}", "observation")
        return self

    @property
    def cameras(self) -> list[str]:
        return sorted(self.observation)

    @property
    def channels(self) -> int:
        return self.observation[self.cameras[0]].shape[2]


def preload() -> None:
    """Imports what building a classifier needs (lerobot's classifier, transformers' ResNet): seconds that hold the
    GIL in long stretches, which an edge spends before its control loop starts rather than during it."""
    import lerobot.rewards.classifier  # noqa: F401
    from transformers import ResNetModel  # noqa: F401


def _lerobot_classifier(config: RewardClassifierConfig) -> nn.Module:
    """lerobot's ``Classifier`` for ``config``, its encoder built from ``config.encoder`` instead of the hub."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.rewards.classifier import Classifier
    from lerobot.rewards.classifier import RewardClassifierConfig as LerobotConfig
    from lerobot.rewards.pretrained import PreTrainedRewardModel

    size, channels = config.encoder.input_size, config.channels
    lerobot_config = LerobotConfig(
        num_cameras=len(config.cameras),
        hidden_dim=config.hidden_dim,
        latent_dim=config.latent_dim,
        image_embedding_pooling_dim=config.image_embedding_pooling_dim,
        dropout_rate=config.dropout_rate,
        model_name="",  # never loaded: the encoder comes from config.encoder
        input_features={
            f"{_OBS_IMAGE}.{name}": PolicyFeature(FeatureType.VISUAL, (channels, size, size)) for name in config.cameras
        },
    )

    class OfflineClassifier(Classifier):
        """``Classifier.__init__`` with its one hub call replaced by a given encoder (lerobot's own methods build
        the rest, for the CNN model type)."""

        def __init__(self, lerobot_config: LerobotConfig, encoder: nn.Module) -> None:
            PreTrainedRewardModel.__init__(self, lerobot_config)
            self.config = lerobot_config
            self.encoder, self.vision_config, self.is_cnn = encoder, encoder.config, True
            self._setup_cnn_backbone()
            self._freeze_encoder()
            self.image_keys = [key.replace(".", "_") for key in lerobot_config.input_features]
            self.encoders = nn.ModuleDict({key: self._create_single_encoder() for key in self.image_keys})
            self._build_classifier_head()
            # Every camera's encoder wraps this one backbone; keeping it once keeps its tensors under one name.
            del self.encoder

    return OfflineClassifier(lerobot_config, config.encoder.build(channels))


class RewardClassifier(Policy):
    """P(success | camera frames). ``act`` returns it as a (1, 1) chunk; ``success_probability`` as a float.

    Training batches carry "obs.<camera>" uint8 (B, H, W, C) frames and ``LABEL`` (B,) floats."""

    type_name: ClassVar[str] = "reward_classifier"
    config_type: ClassVar[type[RewardClassifierConfig]] = RewardClassifierConfig

    def __init__(self, config: RewardClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.cameras = config.cameras
        self.model = _lerobot_classifier(config)
        self.register_buffer("image_mean", torch.zeros(config.channels, 1, 1))
        self.register_buffer("image_std", torch.ones(config.channels, 1, 1))
        # Cameras after the first share the first one's backbone: their tensors are saved once, under the first.
        first = f"model.encoders.{self.model.image_keys[0]}.0."
        self._aliases = [f"model.encoders.{key}.0." for key in self.model.image_keys[1:]], first

    def config_dict(self) -> dict[str, Any]:
        return self.config.as_dict()

    def train(self, mode: bool = True) -> RewardClassifier:
        super().train(mode)
        for encoder in self.model.encoders.values():
            encoder[0].eval()  # frozen: its batch norms keep the statistics they were built or loaded with
        return self

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        state = super().state_dict(*args, **kwargs)
        aliases, _ = self._aliases
        return {k: v for k, v in state.items() if not any(k.startswith(alias) for alias in aliases)}

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        aliases, first = self._aliases
        state = dict(state_dict)
        for key, value in state_dict.items():
            if key.startswith(first):
                state.update({alias + key[len(first) :]: value for alias in aliases})
        return super().load_state_dict(state, strict=strict, assign=assign)

    def _images(self, batch: dict[str, Any]) -> list[torch.Tensor]:
        """Each camera's frames as lerobot takes them: (B, C, S, S) floats, normalized."""
        size = self.config.encoder.input_size
        images = []
        for name in self.cameras:
            frames = torch.as_tensor(batch[f"obs.{name}"]).permute(0, 3, 1, 2).float() / 255.0
            if frames.shape[-2:] != (size, size):
                frames = nn.functional.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
            images.append((frames - self.image_mean) / self.image_std)
        return images

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.model.predict(self._images(batch)).logits

    @torch.no_grad()
    def probabilities(self, observations: list[dict[str, np.ndarray]]) -> np.ndarray:
        """P(success) of each observation, (B,) float32."""
        batch = {f"obs.{k}": np.stack([np.asarray(o[k]) for o in observations]) for k in self.cameras}
        return torch.sigmoid(self.logits(batch)).numpy().astype(np.float32)

    def success_probability(self, observation: dict[str, np.ndarray]) -> float:
        return float(self.probabilities([observation])[0])

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        return self.probabilities([observation]).reshape(1, 1)

    def act_batch(self, observations: list[dict[str, np.ndarray]]) -> np.ndarray:
        return self.probabilities(observations).reshape(-1, 1, 1)

    def fit_normalization(self, batch: dict[str, np.ndarray]) -> None:
        """Per-channel mean and std of every camera's frames (lerobot's MEAN_STD for visual features)."""
        frames = [np.asarray(batch[f"obs.{k}"]) for k in self.cameras]
        every = max(1, len(frames[0]) // STATS_FRAMES)  # a sample of frames: a float copy of them all is large
        pixels = np.concatenate([f[::every].reshape(-1, self.config.channels) for f in frames]) / 255.0
        self.image_mean = torch.as_tensor(pixels.mean(axis=0), dtype=torch.float32).reshape(-1, 1, 1)
        self.image_std = torch.as_tensor(np.maximum(pixels.std(axis=0), MIN_STD), dtype=torch.float32).reshape(-1, 1, 1)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-frame binary cross-entropy on the logits, as lerobot's ``Classifier.forward`` takes it."""
        return nn.functional.binary_cross_entropy_with_logits(
            self.logits(batch), batch[LABEL].float(), reduction="none"
        )
