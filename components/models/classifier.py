"""The in-domain classifier: a small Fashion-MNIST CNN whose penultimate layer is the metric space.

Inception-v3 features (the usual FID space) are trained on ImageNet photographs and need a
weight download; a classifier trained on the data set itself gives a feature space that
knows what a sandal looks like, and it runs offline in minutes on a CPU. Every metric is
recorded with ``state_checksum`` of this network, because FIDs computed with different
extractors are not comparable.
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.config import ClassifierConfig
from components.data.spec import DataSpec
from components.models.base import TrainableModel, build_seeded, state_checksum, unwrap


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv (same padding) -> batch norm -> ReLU; the conv has no bias since BN adds one."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ClassifierNet(nn.Module):
    """conv(w) x2 -> pool -> conv(2w) x2 -> pool -> linear -> ReLU embedding -> linear logits.

    Args:
        spec: image shape (height and width must be multiples of 4) and class count.
        width: channels of the first two convolutions (the last two have ``2 * width``).
        feature_dim: size of the penultimate embedding used as the metric feature space.
    """

    def __init__(self, spec: DataSpec, width: int, feature_dim: int):
        super().__init__()
        if spec.height % 4 or spec.width % 4:
            raise ValueError(f"image size {spec.height}x{spec.width} must be a multiple of 4 (two 2x2 poolings)")
        self.feature_dim = feature_dim
        flat = 2 * width * (spec.height // 4) * (spec.width // 4)
        self.trunk = nn.Sequential(
            _conv_block(spec.channels, width),
            _conv_block(width, width),
            nn.MaxPool2d(2),  # (B, w, H/2, W/2)
            _conv_block(width, 2 * width),
            _conv_block(2 * width, 2 * width),
            nn.MaxPool2d(2),  # (B, 2w, H/4, W/4)
            nn.Flatten(),  # (B, 2w * H/4 * W/4)
            nn.Linear(flat, feature_dim),
            nn.ReLU(inplace=True),  # (B, feature_dim): the embedding
        )
        self.head = nn.Linear(feature_dim, spec.num_classes)

    def embed(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` float in [-1, 1] -> ``(B, feature_dim)`` non-negative features."""
        return self.trunk(images)

    def forward(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` float in [-1, 1] -> ``(B, num_classes)`` logits."""
        return self.head(self.trunk(images))


def uint8_to_float(images: Tensor) -> Tensor:
    """uint8 pixels ``(B, C, H, W)`` in [0, 255] -> float32 in [-1, 1] (the inverse of ``to_uint8``)."""
    return images.float() / 127.5 - 1.0


class FeatureExtractor(nn.Module):
    """A frozen, always-eval view of a trained ``ClassifierNet`` that eats uint8 images.

    Usable directly as torchmetrics' ``FrechetInceptionDistance(feature=...)`` /
    ``KernelInceptionDistance(feature=...)``: it takes what ``update`` is given (uint8
    ``(B, C, H, W)``) and exposes ``num_features`` so torchmetrics does not probe it with a
    3x299x299 dummy image. The pipeline instead extracts features once
    (``Classifier.embed_and_predict`` in the features job) and reuses them for every metric.

    Args:
        net: the trained network; it is put in eval mode and frozen, so pass a copy if it is
            still being trained (``Classifier.feature_extractor`` does).
    """

    def __init__(self, net: ClassifierNet):
        super().__init__()
        self.net = net
        self.num_features: int = net.feature_dim
        self.net.eval()
        self.net.requires_grad_(False)

    def train(self, mode: bool = True) -> FeatureExtractor:
        # torchmetrics' Metric.train() recurses into children: batch norm must stay in eval mode.
        del mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """uint8 ``(B, C, H, W)`` -> float32 ``(B, feature_dim)``."""
        return self.net.embed(uint8_to_float(images))

    @torch.no_grad()
    def classify(self, images: Tensor) -> Tensor:
        """uint8 ``(B, C, H, W)`` -> float32 ``(B, num_classes)`` logits."""
        return self.net(uint8_to_float(images))

    def checksum(self) -> str:
        """The extractor's identity: ``state_checksum`` of its network."""
        return state_checksum(self.net.state_dict())


class Classifier(TrainableModel):
    """Cross-entropy training of ``ClassifierNet`` with Adam(W) at a constant learning rate.

    Args:
        config: classifier settings (``width``, ``feature_dim``, the shared training fields).
        spec: data shape and class count.
        device: where the network, optimiser and generator live.
    """

    family: ClassVar[str] = "classifier"
    network_names: ClassVar[tuple[str, ...]] = ("net",)

    def __init__(self, config: ClassifierConfig, spec: DataSpec, device: torch.device | str = "cpu"):
        super().__init__(config, spec, device)
        net = build_seeded(config.seed, lambda: ClassifierNet(spec, config.width, config.feature_dim))
        self.net: nn.Module = net.to(self.device)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"net": self.make_adam(self.net)}

    def train_step(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """One Adam step on a batch.

        Args:
            images: ``(B, C, H, W)`` float in [-1, 1].
            labels: ``(B,)`` int64.

        Returns:
            ``loss`` (cross entropy) and ``acc`` (batch accuracy), detached 0-dim tensors.
        """
        self.net.train()
        opt = self.optimizers["net"]
        with self.autocast():
            logits = self.net(images)  # (B, num_classes)
        loss = F.cross_entropy(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        self.clip(self.net)
        opt.step()
        self.step += 1
        acc = (logits.detach().argmax(dim=1) == labels).float().mean()
        return {"loss": loss.detach(), "acc": acc}

    @torch.no_grad()
    def embed_and_predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, C, H, W)`` float in [-1, 1] -> ``(B, feature_dim)`` embedding and ``(B,)`` predicted
        classes (the arg-max of the head on that embedding), in eval mode."""
        net = unwrap(self.net)
        net.eval()
        features = net.embed(images)
        return features, net.head(features).argmax(dim=1)

    def feature_extractor(self) -> FeatureExtractor:
        """A frozen uint8-input snapshot of the current network (a copy: later steps do not change it)."""
        return FeatureExtractor(copy.deepcopy(unwrap(self.net)))

    def checksum(self) -> str:
        """``state_checksum`` of the bare network."""
        return state_checksum(unwrap(self.net).state_dict())
