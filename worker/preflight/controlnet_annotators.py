"""ControlNet preprocessors served only when their annotator weights are on the volume.

ControlNet v1.1.455 loads a preprocessor's weights (MiDaS, OpenPose, HED, …) from its annotator folder and,
when the file is not there, downloads it from the Hugging Face hub at first use, while the job waits
(``annotator/*/__init__.py``: ``load_file_from_url`` into ``<annotator folder>/<name>/``). start.sh points
``--controlnet-annotator-models-path`` at the volume's annotator folder; here a unit whose preprocessor's
files are missing there is refused before anything is generated, naming the files and the folder.

The table was read from the extension's annotator code at the pinned commit (docs/extensions.md): each
preprocessor (its API name, and its UI label where that differs) -> the files it loads, relative to the
annotator folder, as the extension writes them. A preprocessor not in the table needs no weights, or is one
of ``UNMAPPED`` (weights the extension fetches elsewhere: insightface, facexlib, hand refiner), which pass.
"""

from __future__ import annotations

from pathlib import Path

from worker.errors import ModelNotFound

#: the annotator folder under the models folder; start.sh passes it as --controlnet-annotator-models-path (not
#: inside ControlNet/, whose files ControlNet lists as its models)
ANNOTATORS_FOLDER = "ControlNet-annotators"

_OPENPOSE = ("openpose/body_pose_model.pth", "openpose/hand_pose_model.pth", "openpose/facenet.pth")
_MIDAS = ("midas/dpt_hybrid-midas-501f0c75.pt",)
_HED = ("hed/ControlNetHED.pth",)
_PIDINET = ("pidinet/table5_pidinet.pth",)
_LERES = ("leres/res101.pth",)
_CLIP_G = ("clip_vision/clip_g.pth",)
_CLIP_H = ("clip_vision/clip_h.pth",)
_YOLOX = "openpose/yolox_l.onnx"
_ANIMAL_POSE = "rtmpose-m_simcc-ap10k_pt-aic-coco_210e-256x256-7a041aa1_20230206.onnx"

#: preprocessor (API name) -> the annotator files it loads (every file its detector loads, even for the
#: variants that use only some: OpenPose loads body, hand and face models together)
ANNOTATOR_WEIGHTS: dict[str, tuple[str, ...]] = {
    "depth": _MIDAS,
    "normal_map": _MIDAS,
    "depth_leres": _LERES,
    "depth_leres++": (*_LERES, "leres/latest_net_G.pth"),
    "depth_zoe": ("zoedepth/ZoeD_M12_N.pt",),
    "depth_anything": ("depth_anything/depth_anything_vitl14.pth",),
    "depth_anything_v2": ("depth_anything_v2/depth_anything_v2_vitl.safetensors",),
    "normal_bae": ("normal_bae/scannet.pt",),
    "normal_dsine": ("normal_dsine/dsine.pt",),
    "openpose": _OPENPOSE,
    "openpose_face": _OPENPOSE,
    "openpose_faceonly": _OPENPOSE,
    "openpose_full": _OPENPOSE,
    "openpose_hand": _OPENPOSE,
    "dw_openpose_full": (_YOLOX, "openpose/dw-ll_ucoco_384.onnx"),
    "animal_openpose": (_YOLOX, f"openpose/{_ANIMAL_POSE}"),
    "densepose": ("densepose/densepose_r50_fpn_dl.torchscript",),
    "densepose_parula": ("densepose/densepose_r50_fpn_dl.torchscript",),
    "lineart": ("lineart/sk_model.pth",),
    "lineart_coarse": ("lineart/sk_model2.pth",),
    "lineart_anime": ("lineart_anime/netG.pth",),
    "lineart_anime_denoise": ("manga_line/erika.pth",),
    "mlsd": ("mlsd/mlsd_large_512_fp32.pth",),
    "hed": _HED,
    "hed_safe": _HED,
    "scribble_hed": _HED,
    "pidinet": _PIDINET,
    "pidinet_safe": _PIDINET,
    "pidinet_scribble": _PIDINET,
    "pidinet_sketch": _PIDINET,
    "softedge_teed": ("TEED/7_model.pth",),
    "softedge_anyline": ("TEED/MTEED.pth",),
    "segmentation": ("uniformer/upernet_global_small.pth",),
    "oneformer_coco": ("oneformer/150_16_swin_l_oneformer_coco_100ep.pth",),
    "oneformer_ade20k": ("oneformer/250_16_swin_l_oneformer_ade20k_160k.pth",),
    "anime_face_segment": ("anime_face_segment/UNet.pth",),
    "mobile_sam": ("mobile_sam/mobile_sam.pt",),
    "inpaint_only+lama": ("lama/ControlNetLama.pth",),
    "clip_vision": ("clip_vision/clip_vitl.pth",),
    "ip-adapter_clip_sd15": _CLIP_H,
    "ip-adapter_clip_sdxl_plus_vith": _CLIP_H,
    "ip-adapter_clip_sdxl": _CLIP_G,
    "revision_clipvision": _CLIP_G,
    "revision_ignore_prompt": _CLIP_G,
}
#: UI label -> API name, where they differ (ControlNet accepts either as a unit's ``module``)
LABELS: dict[str, str] = {
    "depth_midas": "depth",
    "normal_midas": "normal_map",
    "lineart_realistic": "lineart",
    "softedge_hed": "hed",
    "softedge_hedsafe": "hed_safe",
    "softedge_pidinet": "pidinet",
    "softedge_pidisafe": "pidinet_safe",
    "scribble_pidinet": "pidinet_scribble",
    "t2ia_sketch_pidi": "pidinet_sketch",
    "t2ia_style_clipvision": "clip_vision",
    "seg_ufade20k": "segmentation",
    "seg_ofcoco": "oneformer_coco",
    "seg_ofade20k": "oneformer_ade20k",
    "seg_anime_face": "anime_face_segment",
    "ip-adapter_clip_h": "ip-adapter_clip_sd15",
    "ip-adapter_clip_g": "ip-adapter_clip_sdxl",
}
#: preprocessors whose weights the worker has not mapped (they come from elsewhere than the annotator
#: folder, or through another preprocessor): passed through unchecked
UNMAPPED = frozenset(
    {
        "depth_hand_refiner",
        "facexlib",
        "instant_id_face_embedding",
        "instant_id_face_keypoints",
        "ip-adapter-auto",
        "ip-adapter_face_id",
        "ip-adapter_face_id_plus",
        "ip-adapter_pulid",
    }
)


def missing_annotator_weights(module: str, annotators_dir: Path) -> list[str]:
    """The files (relative to ``annotators_dir``) preprocessor ``module`` loads that are not there."""
    needed = ANNOTATOR_WEIGHTS.get(LABELS.get(module, module), ())
    return [name for name in needed if not (annotators_dir / name).is_file()]


def check_annotator_weights(field: str, module: str, annotators_dir: Path) -> None:
    """Refuse a preprocessor whose weights ControlNet would download now.

    Raises:
        ModelNotFound: naming ``field``, each missing file and the folder it belongs in.
    """
    missing = missing_annotator_weights(module, annotators_dir)
    if missing:
        raise ModelNotFound(
            f"{field}: ControlNet preprocessor {module!r} needs {', '.join(missing)} in {annotators_dir}, "
            "which is not there; ControlNet would try to download it while the job waits: put the file(s) "
            "there (docs/extensions.md)",
            details={"module": module, "missing": missing, "folder": str(annotators_dir)},
        )
