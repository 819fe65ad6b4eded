"""The diffusers configs of real SD1.5 and SDXL-base pipelines, as data (no diffusers import).

The converters write them into the diffusers folders they make, the embedded engine into the json-only
"skeleton" folders ``from_single_file`` needs; keeping one copy means both agree on the architecture.
"""

from __future__ import annotations

from typing import Any, Literal

PipelineKind = Literal["sd15", "sdxl"]

#: ``_diffusers_version`` written into folders the worker makes (the oldest diffusers the project supports)
DIFFUSERS_FORMAT_VERSION = "0.35.0"
#: safetensors metadata key under which a (tiny, generated) single file carries its own component configs
CONFIG_METADATA_KEY = "diffusers_server.configs"
#: the ``modelspec.architecture`` an A1111 single file of each kind carries
MODELSPEC_ARCHITECTURE: dict[PipelineKind, str] = {
    "sd15": "stable-diffusion-v1",
    "sdxl": "stable-diffusion-xl-v1-base",
}

SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
}
CLIP_VOCAB_SIZE = 49408


def clip_text_config(
    hidden_size: int, intermediate_size: int, heads: int, layers: int, hidden_act: str = "quick_gelu"
) -> dict[str, Any]:
    """A CLIP text encoder on CLIP's vocabulary and 77 positions: SD1.x's CLIP-L, SDXL's two, a tiny one."""
    return {
        "vocab_size": CLIP_VOCAB_SIZE,
        "max_position_embeddings": 77,
        "bos_token_id": CLIP_VOCAB_SIZE - 2,
        "eos_token_id": CLIP_VOCAB_SIZE - 1,
        "pad_token_id": CLIP_VOCAB_SIZE - 1,
        "hidden_act": hidden_act,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "projection_dim": hidden_size,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
    }


def vae_config(
    channels: list[int], layers_per_block: int, norm_num_groups: int, sample_size: int, scaling_factor: float
) -> dict[str, Any]:
    """SD's KL autoencoder (RGB in, 4 latent channels, one down/up block per channel width)."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(channels),
        "block_out_channels": channels,
        "layers_per_block": layers_per_block,
        "norm_num_groups": norm_num_groups,
        "sample_size": sample_size,
        "scaling_factor": scaling_factor,
    }


_VAE_REAL = {"_class_name": "AutoencoderKL", **vae_config([128, 256, 512, 512], 2, 32, 512, 0.18215)}
_CLIP_L = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    **clip_text_config(768, 3072, heads=12, layers=12),
}
REAL_CONFIGS: dict[PipelineKind, dict[str, dict[str, Any]]] = {
    "sd15": {
        "unet": {
            "_class_name": "UNet2DConditionModel",
            "sample_size": 64,
            "in_channels": 4,
            "out_channels": 4,
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            "block_out_channels": [320, 640, 1280, 1280],
            "layers_per_block": 2,
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
        },
        "vae": {**_VAE_REAL, "scaling_factor": 0.18215},
        "text_encoder": _CLIP_L,
    },
    "sdxl": {
        "unet": {
            "_class_name": "UNet2DConditionModel",
            "sample_size": 128,
            "in_channels": 4,
            "out_channels": 4,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "block_out_channels": [320, 640, 1280],
            "layers_per_block": 2,
            "transformer_layers_per_block": [1, 2, 10],
            "attention_head_dim": [5, 10, 20],
            "cross_attention_dim": 2048,
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816,
        },
        "vae": {**_VAE_REAL, "scaling_factor": 0.13025, "force_upcast": True},
        "text_encoder": _CLIP_L,
        "text_encoder_2": {
            **_CLIP_L,
            "architectures": ["CLIPTextModelWithProjection"],
            **clip_text_config(1280, 5120, heads=20, layers=32, hidden_act="gelu"),
        },
    },
}


def model_index(kind: PipelineKind) -> dict[str, Any]:
    index: dict[str, Any] = {
        "_diffusers_version": DIFFUSERS_FORMAT_VERSION,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if kind == "sd15":
        index |= {
            "_class_name": "StableDiffusionPipeline",
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
        }
    else:
        index |= {
            "_class_name": "StableDiffusionXLPipeline",
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "force_zeros_for_empty_prompt": True,
        }
    return index
