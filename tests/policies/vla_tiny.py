"""A tiny SmolVLA for tests, built offline: a local "VLM model directory" plus the policy config that names it.

lerobot's SmolVLA reads its VLM's ``config.json`` and processor/tokenizer files from ``vlm_model_name`` even when it
loads no VLM weights (``load_vlm_weights=False``): the architecture comes from that config, the language tokenizer
from that tokenizer. By default that is a Hugging Face hub id (HuggingFaceTB/SmolVLM2-500M-Video-Instruct); here it
is a local directory written by ``write_tiny_vlm_dir``: a SmolVLM (Idefics3-style) config with a 1-layer 32-wide
SigLIP-like vision tower on 32x32 images and a 2-layer 64-wide Llama text model, a word-level tokenizer trained
locally with the ``tokenizers`` library on a few words, and the image/video processor configs. Nothing is
downloaded (HF_HUB_OFFLINE=1).

The directory is named by absolute path in the policy's config, so it travels inside the policy's bytes as a path,
not as files: every process that rebuilds the policy (the cloud's remote-inference server) must be able to read it.
In production that path is a local model directory on the inference host (e.g. a copy of the real SmolVLM2 files).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in these tests may reach the hub

# The processor and SmolVLA look these up on the tokenizer (``fake_image_token_id``, ``global_image_token_id``).
IMAGE_TOKENS = {
    "fake_image_token": "<fake_token_around_image>",
    "image_token": "<image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}
SPECIAL_TOKENS = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>", *IMAGE_TOKENS.values(), "<video>"]
WORDS = "push the t block to goal pick up cube and lift it move arm left right a an into place on".split()
IMAGE_SIZE = 32  # the vision tower's input; SmolVLA resizes (with padding) every camera image to this
TEXT_HIDDEN = 64


def write_tiny_vlm_dir(path: str | Path) -> Path:
    """Writes a tiny SmolVLM config, tokenizer and processor configs into ``path``; returns it (absolute)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    path = Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)

    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *WORDS, "\n"])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", behavior="isolated"), pre_tokenizers.WhitespaceSplit()]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        extra_special_tokens=IMAGE_TOKENS,
    )
    fast.add_special_tokens({"additional_special_tokens": [*IMAGE_TOKENS.values(), "<video>"]})
    fast.save_pretrained(path)
    vocab_size = len(fast)

    patch = 8
    scale_factor = 2
    config = {
        "model_type": "smolvlm",
        "architectures": ["SmolVLMForConditionalGeneration"],
        "image_token_id": fast.convert_tokens_to_ids(IMAGE_TOKENS["image_token"]),
        "pad_token_id": fast.pad_token_id,
        "scale_factor": scale_factor,
        "tie_word_embeddings": False,
        "vocab_size": vocab_size,
        "vision_config": {
            "model_type": "smolvlm_vision",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": patch,
        },
        "text_config": {
            "model_type": "llama",
            "vocab_size": vocab_size,
            "hidden_size": TEXT_HIDDEN,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 512,
            "rms_norm_eps": 1e-5,
            "pad_token_id": fast.pad_token_id,
            "tie_word_embeddings": False,
        },
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))

    image_seq_len = (IMAGE_SIZE // patch) ** 2 // scale_factor**2
    image_processor = {
        "image_processor_type": "SmolVLMImageProcessor",
        "processor_class": "SmolVLMProcessor",
        "do_resize": True,
        "size": {"longest_edge": IMAGE_SIZE},
        "max_image_size": {"longest_edge": IMAGE_SIZE},
        "do_image_splitting": False,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_pad": True,
        "do_convert_rgb": True,
    }
    (path / "preprocessor_config.json").write_text(json.dumps(image_processor, indent=2))
    video_processor = {
        **image_processor,
        "video_processor_type": "SmolVLMVideoProcessor",
        "fps": 1,
        "max_frames": 4,
        "do_sample_frames": False,
    }
    del video_processor["image_processor_type"]
    (path / "video_preprocessor_config.json").write_text(json.dumps(video_processor, indent=2))
    (path / "processor_config.json").write_text(
        json.dumps({"processor_class": "SmolVLMProcessor", "image_seq_len": image_seq_len}, indent=2)
    )
    return path


def tiny_smolvla_config(vlm_dir: str | Path, chunk_size: int = 10) -> dict[str, Any]:
    """SmolVLA config fields (as in its config.json) for the tiny VLM at ``vlm_dir``: random weights throughout."""
    return {
        "vlm_model_name": str(Path(vlm_dir).absolute()),
        "load_vlm_weights": False,
        "num_vlm_layers": 2,
        "num_expert_layers": -1,  # as many as the VLM
        "self_attn_every_n_layers": 2,
        "expert_width_multiplier": 0.5,
        "resize_imgs_with_padding": [IMAGE_SIZE, IMAGE_SIZE],
        "max_state_dim": 8,
        "max_action_dim": 8,
        "chunk_size": chunk_size,
        "n_action_steps": chunk_size,
        "num_steps": 4,  # flow-matching denoising steps per chunk
        "tokenizer_max_length": 16,
    }
