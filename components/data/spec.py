"""What a model needs to know about its data, shared by the data and model layers (neither imports the other)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its data: image shape and number of classes."""

    channels: int = 1
    height: int = 28
    width: int = 28
    num_classes: int = 10

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)
