"""Key names between diffusers/PEFT and A1111 layouts, table-driven, and checked against diffusers' own converter."""

from __future__ import annotations

import importlib.util

import pytest

from worker.registry.keymaps import (
    BlockMap,
    LoraKey,
    hf_to_open_clip,
    kohya_name,
    lora_layout,
    open_clip_to_hf,
    parse_lora_key,
    peft_pattern_value,
    unet_blocks,
    vae_blocks,
)
from worker.registry.pipeline_configs import REAL_CONFIGS

SD15 = BlockMap(unet_blocks(REAL_CONFIGS["sd15"]["unet"]))
SDXL = BlockMap(unet_blocks(REAL_CONFIGS["sdxl"]["unet"]))
VAE = BlockMap(vae_blocks(REAL_CONFIGS["sd15"]["vae"]))

# (map, diffusers name, LDM name): the LDM names of real SD1.5/SDXL single files
UNET_CASES = [
    (SD15, "conv_in.weight", "input_blocks.0.0.weight"),
    (SD15, "time_embedding.linear_2.bias", "time_embed.2.bias"),
    (SD15, "down_blocks.0.resnets.0.norm1.weight", "input_blocks.1.0.in_layers.0.weight"),
    (SD15, "down_blocks.0.resnets.1.time_emb_proj.weight", "input_blocks.2.0.emb_layers.1.weight"),
    (SD15, "down_blocks.1.resnets.0.conv_shortcut.weight", "input_blocks.4.0.skip_connection.weight"),
    (SD15, "down_blocks.0.attentions.1.proj_in.weight", "input_blocks.2.1.proj_in.weight"),
    (SD15, "down_blocks.2.downsamplers.0.conv.weight", "input_blocks.9.0.op.weight"),
    (SD15, "down_blocks.3.resnets.1.conv2.bias", "input_blocks.11.0.out_layers.3.bias"),
    (
        SD15,
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
        "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
    ),
    (SD15, "mid_block.resnets.1.norm2.weight", "middle_block.2.out_layers.0.weight"),
    (SD15, "up_blocks.0.resnets.2.conv1.weight", "output_blocks.2.0.in_layers.2.weight"),
    (SD15, "up_blocks.0.upsamplers.0.conv.weight", "output_blocks.2.1.conv.weight"),  # no attention in up 0
    (SD15, "up_blocks.1.upsamplers.0.conv.weight", "output_blocks.5.2.conv.weight"),
    (SD15, "up_blocks.3.attentions.2.proj_out.bias", "output_blocks.11.1.proj_out.bias"),
    (SD15, "conv_norm_out.weight", "out.0.weight"),
    (SD15, "conv_out.bias", "out.2.bias"),
    (SDXL, "add_embedding.linear_1.weight", "label_emb.0.0.weight"),
    (
        SDXL,
        "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k.weight",
        "input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight",
    ),
    (SDXL, "down_blocks.2.attentions.1.proj_in.weight", "input_blocks.8.1.proj_in.weight"),
    (SDXL, "up_blocks.0.upsamplers.0.conv.weight", "output_blocks.2.2.conv.weight"),
    (SDXL, "up_blocks.2.resnets.2.conv2.weight", "output_blocks.8.0.out_layers.3.weight"),
]
VAE_CASES = [
    ("encoder.down_blocks.0.resnets.1.conv1.weight", "encoder.down.0.block.1.conv1.weight"),
    ("encoder.down_blocks.1.resnets.0.conv_shortcut.weight", "encoder.down.1.block.0.nin_shortcut.weight"),
    ("encoder.down_blocks.2.downsamplers.0.conv.bias", "encoder.down.2.downsample.conv.bias"),
    ("decoder.up_blocks.0.resnets.2.norm2.weight", "decoder.up.3.block.2.norm2.weight"),
    ("decoder.up_blocks.2.upsamplers.0.conv.weight", "decoder.up.1.upsample.conv.weight"),
    ("encoder.mid_block.attentions.0.to_out.0.weight", "encoder.mid.attn_1.proj_out.weight"),
    ("decoder.mid_block.attentions.0.group_norm.bias", "decoder.mid.attn_1.norm.bias"),
    ("decoder.mid_block.resnets.1.conv2.weight", "decoder.mid.block_2.conv2.weight"),
    ("encoder.conv_norm_out.weight", "encoder.norm_out.weight"),
    ("post_quant_conv.weight", "post_quant_conv.weight"),
]


@pytest.mark.parametrize(("table", "diffusers", "ldm"), UNET_CASES)
def test_unet_names_both_ways(table: BlockMap, diffusers: str, ldm: str) -> None:
    assert table.to_ldm(diffusers) == ldm
    assert table.to_diffusers(ldm) == diffusers


@pytest.mark.parametrize(("diffusers", "ldm"), VAE_CASES)
def test_vae_names_both_ways(diffusers: str, ldm: str) -> None:
    assert VAE.to_ldm(diffusers) == ldm
    assert VAE.to_diffusers(ldm) == diffusers


def test_legacy_vae_attention_names_are_read_but_never_written() -> None:
    assert VAE.to_ldm("encoder.mid_block.attentions.0.query.weight") == "encoder.mid.attn_1.q.weight"
    assert VAE.to_ldm("decoder.mid_block.attentions.0.proj_attn.bias") == "decoder.mid.attn_1.proj_out.bias"
    assert VAE.to_diffusers("encoder.mid.attn_1.q.weight") == "encoder.mid_block.attentions.0.to_q.weight"


def test_tables_follow_the_config_not_the_real_sizes() -> None:
    tiny = BlockMap(
        unet_blocks(
            {
                "layers_per_block": 1,
                "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
            }
        )
    )
    assert tiny.to_ldm("down_blocks.1.attentions.0.proj_in.weight") == "input_blocks.3.1.proj_in.weight"
    assert tiny.to_ldm("up_blocks.0.upsamplers.0.conv.weight") == "output_blocks.1.2.conv.weight"
    assert tiny.to_ldm("down_blocks.0.attentions.0.proj_in.weight") is None  # DownBlock2D has none
    with pytest.raises(ValueError, match="layers_per_block"):
        unet_blocks({"layers_per_block": [1, 2], "down_block_types": [], "up_block_types": []})


OPEN_CLIP_CASES = [
    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    ("ln_final.bias", "text_model.final_layer_norm.bias"),
    ("text_projection", "text_projection.weight"),
    ("transformer.resblocks.3.mlp.c_fc.weight", "text_model.encoder.layers.3.mlp.fc1.weight"),
    ("transformer.resblocks.0.attn.out_proj.bias", "text_model.encoder.layers.0.self_attn.out_proj.bias"),
    ("transformer.resblocks.31.ln_2.weight", "text_model.encoder.layers.31.layer_norm2.weight"),
]


@pytest.mark.parametrize(("open_clip", "hf"), OPEN_CLIP_CASES)
def test_open_clip_names_both_ways(open_clip: str, hf: str) -> None:
    assert open_clip_to_hf(open_clip) == hf
    assert hf_to_open_clip(hf) == open_clip


def test_open_clip_fused_qkv_splits_into_hf_projections() -> None:
    assert open_clip_to_hf("transformer.resblocks.2.attn.in_proj_weight") == (
        "text_model.encoder.layers.2.",
        "qkv",
        "weight",
    )
    # transformers >= 5.6 saves CLIP without ``text_model.``: both spellings map
    assert hf_to_open_clip("encoder.layers.2.self_attn.k_proj.bias") == (
        "transformer.resblocks.2.",
        "k",
        "bias",
    )
    assert open_clip_to_hf("logit_scale") is None


LORA_KEYS = [
    # diffusers save_lora_weights with PEFT keys
    (
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",
        LoraKey("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "down"),
    ),
    (
        "text_encoder_2.text_model.encoder.layers.0.self_attn.v_proj.lora_B.weight",
        LoraKey("text_encoder_2", "text_model.encoder.layers.0.self_attn.v_proj", "up"),
    ),
    # convert_state_dict_to_diffusers (the training scripts' format)
    (
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0.lora.down.weight",
        LoraKey("unet", "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0", "down"),
    ),
    (
        "text_encoder.encoder.layers.1.self_attn.q_proj.lora_linear_layer.up.weight",
        LoraKey("text_encoder", "encoder.layers.1.self_attn.q_proj", "up"),
    ),
    # attention processors (diffusers < 0.20)
    (
        "unet.up_blocks.1.attentions.2.transformer_blocks.0.attn1.processor.to_out_lora.up.weight",
        LoraKey("unet", "up_blocks.1.attentions.2.transformer_blocks.0.attn1.to_out.0", "up"),
    ),
    # a bare PEFT state, a PeftModel's state, accelerate's full state (adapter "default")
    (
        "down_blocks.0.attentions.0.proj_in.lora_A.weight",
        LoraKey(None, "down_blocks.0.attentions.0.proj_in", "down"),
    ),
    (
        "base_model.model.text_model.encoder.layers.0.mlp.fc1.lora_B.weight",
        LoraKey(None, "text_model.encoder.layers.0.mlp.fc1", "up"),
    ),
    (
        "up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.default.weight",
        LoraKey(None, "up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", "down"),
    ),
    ("unet.conv_in.alpha", LoraKey("unet", "conv_in", "alpha")),
    (
        "unet.down_blocks.0.attentions.0.proj_in.lora_magnitude_vector",
        LoraKey("unet", "down_blocks.0.attentions.0.proj_in", "magnitude"),
    ),
    ("up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.base_layer.weight", None),
    ("down_blocks.0.resnets.0.conv1.weight", None),
]


@pytest.mark.parametrize(("name", "key"), LORA_KEYS)
def test_lora_key_forms(name: str, key: LoraKey | None) -> None:
    assert parse_lora_key(name) == key


@pytest.mark.parametrize(
    ("names", "layout"),
    [
        (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"], "kohya"),
        (["lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"], "kohya"),
        (["lora_unet_input_blocks_4_1_proj_in.hada_w1_a"], "lycoris"),
        (["unet.down_blocks.0.attentions.0.proj_in.lora_A.weight"], "diffusers"),
        (["unet.down_blocks.0.attentions.0.proj_in.lora.down.weight"], "diffusers"),
        (["down_blocks.0.attentions.0.proj_in.lora_A.weight"], "peft"),
        (["base_model.model.down_blocks.0.attentions.0.proj_in.lora_B.default.weight"], "peft"),
        (["model.diffusion_model.input_blocks.0.0.weight"], None),
        (["emb_params"], None),
    ],
)
def test_lora_layouts(names: list[str], layout: str | None) -> None:
    assert lora_layout(names) == layout


@pytest.mark.parametrize(
    ("component", "module", "sdxl", "kohya"),
    [
        # kohya's own conventions: SD1.x UNet by diffusers path, SDXL UNet by LDM path
        (
            "unet",
            "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0",
            False,
            "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0",
        ),
        (
            "unet",
            "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
            True,
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k",
        ),
        ("unet", "mid_block.attentions.0.proj_out", True, "lora_unet_middle_block_1_proj_out"),
        (
            "text_encoder",
            "encoder.layers.3.self_attn.q_proj",
            False,
            "lora_te_text_model_encoder_layers_3_self_attn_q_proj",
        ),
        (
            "text_encoder",
            "text_model.encoder.layers.0.mlp.fc2",
            True,
            "lora_te1_text_model_encoder_layers_0_mlp_fc2",
        ),
        (
            "text_encoder_2",
            "encoder.layers.31.self_attn.out_proj",
            True,
            "lora_te2_text_model_encoder_layers_31_self_attn_out_proj",
        ),
    ],
)
def test_kohya_names(component: str, module: str, sdxl: bool, kohya: str) -> None:
    assert kohya_name(component, module, sdxl=sdxl, unet_map=SDXL if sdxl else SD15) == kohya  # type: ignore[arg-type]


def test_kohya_name_refusals() -> None:
    with pytest.raises(ValueError, match="only exists in SDXL"):
        kohya_name("text_encoder_2", "encoder.layers.0.mlp.fc1", sdxl=False, unet_map=SD15)
    with pytest.raises(ValueError, match="no LDM counterpart"):
        kohya_name("unet", "down_blocks.0.attentions.0.proj_in", sdxl=True, unet_map=SDXL)


def test_peft_alpha_pattern_matches_module_endings() -> None:
    patterns = {"attn2.to_k": 16, r"down_blocks\.1\..*to_q": 2}
    assert peft_pattern_value(patterns, "mid_block.attentions.0.transformer_blocks.0.attn2.to_k", 8) == 16
    assert peft_pattern_value(patterns, "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", 8) == 2
    assert peft_pattern_value(patterns, "down_blocks.2.attentions.0.transformer_blocks.0.attn1.to_q", 8) == 8


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="needs diffusers (engine extra)")
@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_tables_agree_with_diffusers_own_single_file_converter(kind: str) -> None:
    """Every tensor of real-size SD1.5/SDXL UNets and VAEs (on the meta device: no memory), named the LDM way
    by our tables, comes back to its own name through diffusers' LDM -> diffusers conversion."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from worker.registry.keymaps import is_vae_attention_matrix

    configs = REAL_CONFIGS[kind]  # type: ignore[index]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**{k: v for k, v in configs["unet"].items() if not k.startswith("_")})
        vae = AutoencoderKL(**{k: v for k, v in configs["vae"].items() if not k.startswith("_")})
    unet_map = BlockMap(unet_blocks(configs["unet"]))
    state = unet.state_dict()
    ldm = {f"model.diffusion_model.{unet_map.to_ldm(k)}": v for k, v in state.items()}
    assert set(convert_ldm_unet_checkpoint(ldm, configs["unet"])) == set(state)
    vae_map = BlockMap(vae_blocks(configs["vae"]))
    vae_state = vae.state_dict()
    vae_ldm = {}
    for name, value in vae_state.items():
        target = vae_map.to_ldm(name)
        assert target is not None
        if is_vae_attention_matrix(target, tuple(value.shape)):
            value = value[:, :, None, None]
        vae_ldm[f"first_stage_model.{target}"] = value
    back = convert_ldm_vae_checkpoint(vae_ldm, configs["vae"])
    assert set(back) == set(vae_state)
    assert all(back[k].shape == vae_state[k].shape for k in vae_state)
