"""``start.sh --bake-models`` keeps a checkpoint's model config with it.

A1111 reads ``<stem>.yaml`` beside a checkpoint as its model config (an SD2 v-prediction model, any other
shapes); found by the image's BAKE_MODEL build, where the baked checkpoint arrived without its config and
A1111 built the wrong model for it.
"""

from __future__ import annotations

from pathlib import Path

from tests.deploy.test_layout import layout, run_start


def test_a_baked_checkpoint_keeps_its_config_beside_it(tmp_path: Path) -> None:
    bake = tmp_path / "bake" / "checkpoints"
    bake.mkdir(parents=True)
    (bake / "v_model.safetensors").write_bytes(b"weights")
    (bake / "v_model.yaml").write_text("model: {}\n")
    (bake / "notes.yaml").write_text("not a model's config\n")
    result = run_start(tmp_path, "--bake-models", str(tmp_path / "bake"))
    assert result.returncode == 0, result.stderr
    baked = layout(tmp_path)["A1111_BAKED_CHECKPOINTS_DIR"]
    assert sorted(p.name for p in baked.iterdir()) == ["v_model.safetensors", "v_model.yaml"]
    assert (baked / "v_model.yaml").read_text() == "model: {}\n"
