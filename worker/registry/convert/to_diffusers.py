"""An A1111 single-file checkpoint -> a diffusers pipeline folder (for the embedded engine's faster load).

The configs come from the file's own metadata (``CONFIG_METADATA_KEY``, written by ``to_single_file`` and
the demo models) or are the standard SD1.5/SDXL-base ones, checked against the file's shapes (another
architecture is "unknown base model"). Noise-schedule buffers, EMA copies and ``position_ids`` are not
weights of a pipeline and are left out; no tokenizer files are written (the embedded engine brings CLIP's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.registry.conversions import ConversionFailed, Summary
from worker.registry.convert.tensor_plan import Plan, SplitSource, TensorSource, open_tensor_file, write_plan
from worker.registry.detect import UnsupportedCheckpoint, checkpoint_pipeline
from worker.registry.hashing import ByteProgress
from worker.registry.keymaps import (
    LDM_PREFIX,
    BlockMap,
    clip_to_hf,
    is_vae_attention_matrix,
    open_clip_to_hf,
    unet_blocks,
    vae_blocks,
)
from worker.registry.pipeline_configs import (
    CONFIG_METADATA_KEY,
    DIFFUSERS_FORMAT_VERSION,
    REAL_CONFIGS,
    SCHEDULER,
    PipelineKind,
    model_index,
)
from worker.registry.tensors import TensorFile

Configs = dict[str, dict[str, Any]]
_WEIGHT_FILES = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model"}


def diffusers_from_checkpoint(
    path: Path, out_dir: Path, *, half: bool = False, progress: ByteProgress | None = None
) -> Summary:
    """Write the A1111 single file ``path`` as a diffusers pipeline folder ``out_dir`` (created here)."""
    file = open_tensor_file(path)
    try:
        kind = checkpoint_pipeline(file.header.tensors, file.metadata, name=path.name)
    except UnsupportedCheckpoint as exc:
        raise ConversionFailed(str(exc)) from None
    configs, source = _configs(file, kind)
    _check_configs(file, configs, source)
    planner = _Planner(file, kind, configs)
    plans = planner.plan()
    out_dir.mkdir(parents=True)
    written = sum(_write_component(out_dir, c, plan, configs[c], half, progress) for c, plan in plans.items())
    (out_dir / "scheduler").mkdir()
    (out_dir / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(SCHEDULER, indent=1), encoding="utf-8"
    )
    index = model_index(kind)
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=1, sort_keys=True), encoding="utf-8")
    return Summary(
        tensors=sum(len(p) for p in plans.values()),
        bytes_written=written,
        dropped=planner.dropped,
        notes=["no tokenizer files written: the embedded engine supplies CLIP's tokenizer"],
        facts={"architecture": kind, "configs": source},
    )


def _configs(file: TensorFile, kind: PipelineKind) -> tuple[Configs, str]:
    """The component configs and where they came from ("recorded" in the file, else the standard ones)."""
    if CONFIG_METADATA_KEY not in file.metadata:
        return REAL_CONFIGS[kind], "SD1.5" if kind == "sd15" else "SDXL-base"
    try:
        return json.loads(file.metadata[CONFIG_METADATA_KEY]), "recorded"
    except json.JSONDecodeError:
        raise ConversionFailed(f"{file.path.name}: its {CONFIG_METADATA_KEY} metadata is not JSON") from None


def _write_component(
    out_dir: Path,
    component: str,
    plan: Plan,
    config: dict[str, Any],
    half: bool,
    progress: ByteProgress | None,
) -> int:
    sub = out_dir / component
    sub.mkdir()
    config = {**config, "_diffusers_version": DIFFUSERS_FORMAT_VERSION}
    if half and "text" in component:
        config["torch_dtype"] = "float16"
    (sub / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True), encoding="utf-8")
    weights = sub / f"{_WEIGHT_FILES.get(component, 'model')}.safetensors"
    return write_plan(weights, plan, {"format": "pt"}, half, progress)


def _check_configs(file: TensorFile, configs: Configs, source: str) -> None:
    """The configs must describe this file's shapes; a mismatch means another (unknown) architecture."""
    unet, vae = configs["unet"], configs["vae"]
    checks = [
        ("model.diffusion_model.input_blocks.0.0.weight", 0, unet["block_out_channels"][0], "UNet channels"),
        ("first_stage_model.encoder.conv_in.weight", 0, vae["block_out_channels"][0], "VAE channels"),
    ]
    width_key = next((n for n in file.names if n.endswith("attn2.to_k.weight")), None)
    if width_key:
        checks.append((width_key, 1, unet["cross_attention_dim"], "cross-attention width"))
    last_input = max(
        (int(n.split(".")[3]) for n in file.names if n.startswith("model.diffusion_model.input_blocks.")),
        default=-1,
    )
    expected_last = len(unet["down_block_types"]) * (int(unet["layers_per_block"]) + 1) - 1
    problems = [
        f"{what} {file.shape(key)[dim]} (the {source} config says {value})"
        for key, dim, value, what in checks
        if key in file.header.tensors and file.shape(key)[dim] != value
    ]
    if last_input != expected_last:
        problems.append(f"{last_input + 1} UNet input blocks (the {source} config says {expected_last + 1})")
    if problems:
        raise ConversionFailed(
            f"{file.path.name} does not match the {source} architecture: {'; '.join(problems)}. "
            "Unknown base model: only standard SD1.5/SDXL files, or files carrying their configs "
            f"({CONFIG_METADATA_KEY} metadata), convert to a diffusers folder"
        )


@dataclass
class _Planner:
    """Each tensor of an A1111 single file assigned to its diffusers component and name."""

    file: TensorFile
    kind: PipelineKind
    configs: Configs
    dropped: list[str] = field(default_factory=list)
    #: OpenCLIP's fused q/k/v tensors -> the diffusers name template of the three projections
    fused: dict[str, str] = field(default_factory=dict)

    def plan(self) -> dict[str, Plan]:
        plans: dict[str, Plan] = {c: {} for c in self.configs if c in ("unet", "vae") or "text" in c}
        unet = BlockMap(unet_blocks(self.configs["unet"]))
        vae = BlockMap(vae_blocks(self.configs["vae"]))
        te = LDM_PREFIX[f"{self.kind}.text_encoder"]
        te2 = LDM_PREFIX.get(f"{self.kind}.text_encoder_2", "\0")
        for name in self.file.names:
            if name.startswith(LDM_PREFIX["unet"]):
                self._block(plans["unet"], unet, name, LDM_PREFIX["unet"], "UNet")
            elif name.startswith(LDM_PREFIX["vae"]):
                self._block(plans["vae"], vae, name, LDM_PREFIX["vae"], "VAE")
            elif name.startswith(te):
                self._clip(plans["text_encoder"], name, te)
            elif name.startswith(te2):
                self._open_clip(plans["text_encoder_2"], name, te2)
            else:  # noise schedule buffers, EMA copies, ...: not part of the pipeline's weights
                self.dropped.append(name)
        for name, template in self.fused.items():
            rows, *rest = self.file.shape(name)
            for index, which in enumerate("qkv"):
                plans["text_encoder_2"][template.format(which)] = SplitSource(
                    self.file, (name,), (rows // 3, *rest), index=index
                )
        missing = [c for c, plan in plans.items() if not plan]
        if missing:
            raise ConversionFailed(f"{self.file.path.name} has no weights for {', '.join(missing)}")
        return plans

    def _block(self, plan: Plan, blocks: BlockMap, name: str, prefix: str, what: str) -> None:
        rest = name[len(prefix) :]
        target = blocks.to_diffusers(rest)
        if target is None:
            raise ConversionFailed(f"{what} tensor {name!r} has no diffusers counterpart")
        shape = self.file.shape(name)
        if what == "VAE" and is_vae_attention_matrix(rest, shape) and len(shape) == 4:
            shape = shape[:2]  # A1111 keeps VAE attention as 1x1 convolutions
        plan[target] = TensorSource(self.file, (name,), shape)

    def _clip(self, plan: Plan, name: str, prefix: str) -> None:
        if name.endswith("position_ids"):
            self.dropped.append(name)
            return
        plan[clip_to_hf(name[len(prefix) :])] = TensorSource(self.file, (name,), self.file.shape(name))

    def _open_clip(self, plan: Plan, name: str, prefix: str) -> None:
        rest = name[len(prefix) :]
        mapped = open_clip_to_hf(rest)
        if mapped is None:
            if rest.split(".")[0] != "logit_scale" and not rest.endswith("attn_mask"):
                raise ConversionFailed(f"OpenCLIP tensor {name!r} has no diffusers counterpart")
            self.dropped.append(name)
        elif isinstance(mapped, tuple):
            self.fused[name] = mapped[0] + "self_attn.{}_proj." + mapped[2]
        else:
            shape = self.file.shape(name)
            transpose = rest == "text_projection"
            plan[mapped] = TensorSource(self.file, (name,), shape[::-1] if transpose else shape, transpose)
