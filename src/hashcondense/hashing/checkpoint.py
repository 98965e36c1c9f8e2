"""Save and load trained hashing networks as safetensors + JSON (never pickle)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save

from ..models import HashingNetwork
from ..records import atomic_write_bytes, write_json
from .base import HashMethod, build_hash_method

WEIGHTS = "model.safetensors"
META = "model.json"


def save_hashing_model(
    directory: str | os.PathLike, model: HashingNetwork, method: HashMethod, meta: dict[str, Any]
) -> Path:
    """Write weights and the metadata needed to rebuild the network (backbone, head, sizes)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    required = {"backbone", "bits", "num_classes", "in_channels", "resolution", "normalization"}
    if missing := required - meta.keys():
        raise ValueError(f"model metadata lacks {sorted(missing)}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(directory / WEIGHTS, save(state))
    write_json(directory / META, {**meta, "hash_method": {"name": method.name, **asdict(method)}})
    return directory


def load_hashing_model(directory: str | os.PathLike) -> tuple[HashingNetwork, dict[str, Any]]:
    from .trainer import build_hashing_network

    directory = Path(directory)
    meta_path, weights_path = directory / META, directory / WEIGHTS
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: not found (is {directory} a trained-model folder?)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    try:
        method_params = dict(meta["hash_method"])
        method = build_hash_method(method_params.pop("name"), **method_params)
        model = build_hashing_network(
            method, backbone=meta["backbone"], bits=meta["bits"],
            num_classes=meta["num_classes"], in_channels=meta["in_channels"],
            resolution=meta["resolution"], seed=0,
        )
    except (KeyError, TypeError) as e:
        raise ValueError(f"{meta_path}: missing or unexpected field ({e})") from None
    state = load_file(str(weights_path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{weights_path}: weights do not match {META} ({e})") from None
    model.eval()
    return model, meta
