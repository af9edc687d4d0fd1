"""Checkpoints: tensors and plain data only, loadable with ``torch.load(weights_only=True)``.

A checkpoint carries its model's validated config and data spec, so the model can be
rebuilt from the file alone (as nanoGPT stores ``model_args``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from components.config import model_config_from_dict
from components.data.spec import DataSpec
from components.io import atomic_path
from components.models.base import TrainableModel, state_checksum

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 1


def checkpoint_payload(model: TrainableModel, *, name: str, epoch: int, extra: dict[str, Any] | None = None) -> dict:
    """Everything needed to resume or rebuild ``model`` after ``epoch`` completed epochs."""
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "family": model.family,
        "config": model.config.model_dump(mode="json"),
        "precision": model.precision,  # what the run trained in (the config may say auto)
        "data_spec": model.spec.to_dict(),
        "epoch": epoch,
        "state": model.state_dict(),
        "extra": extra or {},
    }


def parameter_digest(model: TrainableModel) -> str:
    """``state_checksum`` (16 hex chars) of every network's parameters, named ``<network>.<parameter>``.

    Buffers are left out on purpose: under DDP each rank updates BatchNorm running statistics
    from its own shard after rank 0's copy is broadcast, so only the parameters must agree.
    """
    return state_checksum({f"{net_name}.{key}": param for net_name, net in model.networks().items()
                           for key, param in net.named_parameters()})


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """Write ``payload`` to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint safely (``weights_only``: no code runs)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint; run the train stage first")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {payload.get('format_version')} != {FORMAT_VERSION}")
    return payload


def model_from_checkpoint(source: dict | bytes | str | Path, device: str | torch.device = "cpu") -> TrainableModel:
    """Rebuild a model (networks, optimisers, EMA, step) from a checkpoint alone.

    Args:
        source: a loaded payload, the checkpoint file's bytes (as a job spec carries it to the
            workers) or its path (a file, or the folder holding ``checkpoint.pt``).
        device: where the model is built and the tensors loaded.
    """
    from components.models import build_model

    if isinstance(source, bytes):
        payload = torch.load(io.BytesIO(source), map_location=device, weights_only=True)
    else:
        payload = source if isinstance(source, dict) else load_checkpoint(source, device)
    model = build_model(model_config_from_dict(payload["config"]), DataSpec(**payload["data_spec"]), device)
    model.load_state_dict(payload["state"])
    return model
