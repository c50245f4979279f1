"""The trained pipeline folder: the trained parameters loaded into a fresh float32 copy of the base model."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..pipeline import FaceDiffuserPipeline
from .config import ModelKind

logger = logging.getLogger(__name__)


def trained_tensors(denoiser: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """The parameters of ``denoiser`` that require a gradient, float32 on the CPU, grouped by part (``unet``,
    ``subject_fuser``, ``image_encoder``)."""
    state: dict[str, dict[str, torch.Tensor]] = {}
    for name, p in denoiser.named_parameters():
        if p.requires_grad:
            part, _, key = name.partition(".")
            state.setdefault(part, {})[key] = p.detach().float().cpu().clone()
    return state


def export_pipeline(
    kind: ModelKind, state: dict[str, dict[str, torch.Tensor]], base: FaceDiffuserPipeline, output_dir: Path
) -> Path:
    """Loads ``state`` into ``base`` (the trained UNet goes to ``subject_unet`` for the SDM, ``unet`` for the TDM)
    and saves it to ``output_dir`` as safetensors. Raises ``RuntimeError`` when a tensor does not fit the base.

    For the IP-Adapter, ``output_dir`` gets the adapter file and the base's vision tower instead
    (:func:`~facediffuser.training.adapter.write_adapter_folder`): what ``load_ip_adapter`` reads."""
    if kind is ModelKind.IP_ADAPTER:
        from .adapter import write_adapter_folder

        try:
            path = write_adapter_folder(base.unet, state["unet"], base.image_encoder, Path(output_dir))
        except KeyError as err:
            raise RuntimeError(f"The trained IP-Adapter lacks {err} for the base model's UNet.") from err
        logger.info("Wrote the trained IP-Adapter to %s", path)
        return Path(output_dir)
    targets = {"unet": "subject_unet" if kind is ModelKind.SDM else "unet"}
    for part, tensors in state.items():
        module = getattr(base, targets.get(part, part))
        unexpected = module.load_state_dict(tensors, strict=False).unexpected_keys
        if unexpected:
            raise RuntimeError(f"The trained {part} does not fit the base model: {unexpected[:3]} ...")
    base.save_pretrained(output_dir, safe_serialization=True)
    logger.info("Wrote the trained pipeline to %s", output_dir)
    return output_dir


def attach_face_detector(pipeline: Path, detector: Path) -> None:
    """Makes the pipeline folder ``pipeline`` cut its references to faces: ``detector`` (a folder of
    ``FaceDetector.save_pretrained``) is copied in as its ``face_detector`` component, for an SDM trained on head
    references (``reference_region = "head"``), which must read head crops at test too. Idempotent."""
    import json
    import shutil

    from ..io.files import read_json
    from ..models import FaceDetector

    index_file = pipeline / "model_index.json"
    index = read_json(index_file, dict, "a model index")
    target = pipeline / "face_detector"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(detector, target)
    index["face_detector"] = [FaceDetector.__module__, FaceDetector.__name__]
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
