"""``restore_faces``: served only when the face restorer's weights are on the volume.

Measured on A1111 v1.10.1 (``tests/fixtures/a1111/tools.json``): without them A1111 tries to download them at
request time (``modules/codeformer_model.py``, ``gfpgan_model.py``, facexlib's detector and parser), logs the
failure and answers 200 with the image unrestored while its infotext still says ``Face restoration:
CodeFormer``. start.sh points ``--codeformer-models-path`` and ``--gfpgan-models-path`` at the volume's
``Codeformer/`` and ``GFPGAN/``; facexlib's two models go to the GFPGAN folder for both restorers.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worker.errors import InputInvalid, ModelNotFound

#: the face detector and parser every restorer's face helper loads (facexlib, saved under GFPGAN/)
_FACE_HELPER = ("GFPGAN/detection_Resnet50_Final.pth", "GFPGAN/parsing_parsenet.pth")
#: restorer (A1111's ``face_restoration_model``) -> (folder, a test its weight file passes, the usual file)
RESTORERS: dict[str, tuple[str, str, str]] = {
    "CodeFormer": ("Codeformer", "", "codeformer-v0.1.0.pth"),  # any .pth there: A1111 loads the first
    "GFPGAN": ("GFPGAN", "GFPGAN", "GFPGANv1.4.pth"),  # a .pth whose name contains "GFPGAN"
}
DEFAULT_RESTORER = "CodeFormer"  # A1111's default face_restoration_model


def _restorer_present(models_dir: Path, restorer: str) -> bool:
    folder, must_contain, _ = RESTORERS[restorer]
    root = models_dir / folder
    return root.is_dir() and any(
        path.is_file() and must_contain in path.name
        for path in root.rglob("*.pth")
        if path.name not in {Path(name).name for name in _FACE_HELPER}
    )


def missing_face_restoration_weights(models_dir: Path, restorer: str) -> list[str]:
    """The files (relative to the models folder) ``restorer`` needs that are not there."""
    folder, _, usual = RESTORERS[restorer]
    missing = [] if _restorer_present(models_dir, restorer) else [f"{folder}/{usual}"]
    return missing + [name for name in _FACE_HELPER if not (models_dir / name).is_file()]


def check_face_restoration(
    restore_faces: bool | None,
    overrides: Mapping[str, Any] | None,
    engine_options: Mapping[str, Any],
    models_dir: Path,
) -> None:
    """Refuse ``restore_faces`` when A1111 would download its weights now or restore nothing.

    Raises:
        InputInvalid: ``face_restoration_model`` names no restorer A1111 has.
        ModelNotFound: naming each missing weight file and where it belongs.
    """
    if not restore_faces:
        return
    restorer = str(
        (overrides or {}).get("face_restoration_model")
        or engine_options.get("face_restoration_model")
        or DEFAULT_RESTORER
    )
    if restorer not in RESTORERS:
        raise InputInvalid(
            f"restore_faces with face_restoration_model {restorer!r}: A1111 has no such restorer and would "
            f"return the images unrestored; valid: {', '.join(RESTORERS)}"
        )
    missing = missing_face_restoration_weights(models_dir, restorer)
    if missing:
        raise ModelNotFound(
            f"restore_faces with {restorer} needs {', '.join(missing)} in {models_dir}, which is not there; "
            "A1111 would try to download it now and, failing, return the images unrestored: put the file(s) "
            "on the volume",
            details={"missing": missing},
        )
