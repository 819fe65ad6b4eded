"""Training outputs built at test time by the libraries that write them in real life (never committed).

diffusers' ``save_pretrained`` (pipeline folders) and ``save_lora_weights`` (LoRA files), peft's adapters
and accelerate's ``save_state`` (``checkpoint-N`` folders), on the tiny demo architectures, so a test
compares a converted file with what the training run itself computed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from diffusers_server.demo_models import TINY_CONFIGS, _randomize_norms
from diffusers_server.tokenizer import load_clip_tokenizer, load_vocabulary

Kind = Literal["sd15", "sdxl"]
Pipe = StableDiffusionPipeline | StableDiffusionXLPipeline
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.2"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def tiny_pipeline(kind: Kind, tokenizer_dir: Path, seed: int = 0) -> Pipe:
    """A random tiny SD1.5 or SDXL pipeline (the demo models' architecture) with CLIP's tokenizer."""
    configs = TINY_CONFIGS[kind]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        te = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
        _randomize_norms(unet, vae, te)
        tokenizer = load_clip_tokenizer(load_vocabulary().write_folder(tokenizer_dir))
        if kind == "sd15":
            return StableDiffusionPipeline(
                vae=vae,
                text_encoder=te,
                tokenizer=tokenizer,
                unet=unet,
                scheduler=EulerDiscreteScheduler(),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"]))
        _randomize_norms(te2)
        return StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=te,
            text_encoder_2=te2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=unet,
            scheduler=EulerDiscreteScheduler(),
        )


def render(pipe: Pipe, seed: int = 1, prompt: str = "a lighthouse at dusk") -> np.ndarray:
    """A deterministic 64x64, 3-step image as floats (what every comparison here uses)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        out = pipe(
            prompt=prompt, num_inference_steps=3, height=64, width=64, generator=generator, output_type="np"
        )
    return np.asarray(out.images[0], dtype=np.float32)


def text_encoders(pipe: Pipe) -> dict[str, torch.nn.Module]:
    found = {"text_encoder": pipe.text_encoder}
    if isinstance(pipe, StableDiffusionXLPipeline):
        found["text_encoder_2"] = pipe.text_encoder_2
    return found


@dataclass
class TrainedLora:
    """A pipeline after "training" (adapters with random up matrices) and its untouched twin."""

    trained: Pipe
    base: Pipe
    unet_config: LoraConfig | None
    text_config: LoraConfig | None


def train_lora(
    pipe: Pipe,
    *,
    unet: bool = True,
    text: bool = True,
    rank: int = 4,
    alpha: float = 8,
    use_rslora: bool = False,
    seed: int = 7,
) -> TrainedLora:
    """Add peft adapters as diffusers' training scripts do and give them random (trained-looking) weights."""
    base = copy.deepcopy(pipe)
    unet_config = text_config = None
    if unet:
        unet_config = LoraConfig(
            r=rank,
            lora_alpha=alpha,
            target_modules=UNET_TARGETS,
            use_rslora=use_rslora,
            init_lora_weights="gaussian",
        )
        pipe.unet.add_adapter(unet_config)
    if text:
        text_config = LoraConfig(r=2, lora_alpha=1, target_modules=TEXT_TARGETS, init_lora_weights="gaussian")
        for encoder in text_encoders(pipe).values():
            inject_adapter_in_model(text_config, encoder)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for model in (pipe.unet, *text_encoders(pipe).values()):
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.3)
    return TrainedLora(pipe, base, unet_config, text_config)


def lora_layers(trained: TrainedLora, *, old_format: bool) -> dict[str, Any]:
    """The ``*_lora_layers`` arguments of ``save_lora_weights``, as the training scripts build them."""

    def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        peft_state = get_peft_model_state_dict(model)
        return convert_state_dict_to_diffusers(peft_state) if old_format else peft_state

    layers: dict[str, Any] = {}
    if trained.unet_config is not None:
        layers["unet_lora_layers"] = state(trained.trained.unet)
    if trained.text_config is not None:
        for name, encoder in text_encoders(trained.trained).items():
            layers[f"{name}_lora_layers"] = state(encoder)
    return layers


def save_diffusers_lora(trained: TrainedLora, folder: Path, *, old_format: bool, metadata: bool) -> Path:
    """``save_lora_weights`` with the PEFT keys (``lora_A``) or the older ``lora.down`` keys, with or
    without the adapters' settings (``lora_adapter_metadata``)."""
    kwargs = lora_layers(trained, old_format=old_format)
    if metadata:
        if trained.unet_config is not None:
            kwargs["unet_lora_adapter_metadata"] = trained.unet_config.to_dict()
        if trained.text_config is not None:
            for name in text_encoders(trained.trained):
                kwargs[f"{name}_lora_adapter_metadata"] = trained.text_config.to_dict()
    type(trained.trained).save_lora_weights(str(folder), **kwargs)
    return folder / "pytorch_lora_weights.safetensors"


def save_accelerate_checkpoint(trained: TrainedLora, folder: Path) -> Path:
    """``accelerator.save_state`` of a UNet LoRA run: ``model.safetensors`` (the full state, base weights
    and ``lora_A.default`` adapters), ``optimizer.bin``, ``scheduler.bin``, ``random_states_0.pkl``."""
    from accelerate import Accelerator

    unet = trained.trained.unet
    params = [p for name, p in unet.named_parameters() if "lora_" in name]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    accelerator = Accelerator(cpu=True, project_dir=str(folder.parent))
    accelerator.prepare(unet, optimizer, scheduler)
    accelerator.save_state(str(folder))
    return folder
