"""Load a transformers-format MaskFormer checkpoint from a local directory or a hub id."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, MaskFormerForInstanceSegmentation

from maskserve.errors import first_line
from maskserve.export.errors import ExportError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PREPROCESSOR_FILE = "preprocessor_config.json"


@dataclass
class Checkpoint:
    model: MaskFormerForInstanceSegmentation
    source: str
    preprocessor: dict[str, Any]
    sha256: str

    @property
    def backbone(self) -> str:
        config: Any = self.model.config
        return str(config.backbone_config.model_type)


def resolve_source(spec: str) -> str:
    """The local directory (absolute) or the hub id to load; raises for anything else."""
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ExportError(f"checkpoint {spec} is a file; expected a directory with config.json")
        if not (path / "config.json").is_file():
            raise ExportError(f"no config.json in {spec}: not a transformers checkpoint directory")
        return str(path.resolve())
    if _HUB_ID.match(spec) and not spec.startswith("."):
        return spec
    raise ExportError(f"checkpoint not found: {spec} (no such directory, and not a hub id like owner/name)")


def load_checkpoint(spec: str) -> Checkpoint:
    """Load config, weights and preprocessor settings; every failure is one ExportError line."""
    source = resolve_source(spec)
    try:
        config: Any = AutoConfig.from_pretrained(source)
    except Exception as exc:  # transformers raises many types; the user needs one line
        raise ExportError(f"cannot read the config of {spec}: {first_line(exc)}") from exc
    if config.model_type != "maskformer":
        raise ExportError(f"{spec} holds a '{config.model_type}' model, not a MaskFormer checkpoint")
    try:
        loaded: Any = MaskFormerForInstanceSegmentation.from_pretrained(
            source, config=config, dtype=torch.float32, output_loading_info=True
        )
        model, info = loaded
    except Exception as exc:
        raise ExportError(f"cannot load the weights of {spec}: {first_line(exc)}") from exc
    problems = [key for kind in ("missing_keys", "mismatched_keys") for key in info.get(kind, [])]
    if problems:
        raise ExportError(
            f"the weights in {spec} do not fit its config: {len(problems)} missing or mismatched "
            f"tensors (first: {problems[0]})"
        )
    model.eval()
    return Checkpoint(
        model=model,
        source=source,
        preprocessor=_read_preprocessor(source),
        sha256=state_dict_sha256(model),
    )


def _read_preprocessor(source: str) -> dict[str, Any]:
    path = Path(source) / PREPROCESSOR_FILE
    if not path.is_absolute():  # a hub id: the file comes from the hub cache
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source, PREPROCESSOR_FILE))
        except Exception:
            return {}
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"cannot read {path}: {first_line(exc)}") from exc
    return data if isinstance(data, dict) else {}


def state_dict_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over every tensor (name, dtype, shape, bytes), independent of file layout."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()
