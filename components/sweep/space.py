"""A sweep file's search space as Ray Tune's, and the best trial's values as a params overlay.

Plain Python besides ``ray.tune``'s sampling functions: no Ray cluster is needed here.
"""

from __future__ import annotations

import shlex
from typing import Any

import yaml

from components.config import SearchSpace, SweepConfig, TrainBase, flatten, model_config_from_dict


def tune_space(sweep: SweepConfig) -> dict[str, Any]:
    """Tune's ``param_space``: one sampler per swept training key."""
    from ray import tune

    def sampler(space: SearchSpace) -> Any:
        if space.grid is not None:
            return tune.grid_search(space.grid)
        if space.choice is not None:
            return tune.choice(space.choice)
        if space.uniform is not None:
            return tune.uniform(*space.uniform)
        return tune.loguniform(*space.loguniform)

    return {key: sampler(space) for key, space in sweep.space.items()}


def trial_config(section: TrainBase, values: dict[str, Any], steps: int) -> TrainBase:
    """The training section one trial runs: ``section`` with the trial's ``values``, ``steps`` long.

    Raises:
        pydantic.ValidationError: a combination of values the section rejects (the trial fails).
    """
    return model_config_from_dict({**section.model_dump(mode="json"), **values, "epochs": None, "steps": steps})


def best_overlay(model: str, values: dict[str, Any]) -> dict[str, Any]:
    """The best trial's swept values as a params overlay: ``{"train": {model: values}}``.

    The sweep's per-trial ``steps`` is left out: the model keeps its own length in ``params.yaml``.
    """
    return {"train": {model: dict(sorted(values.items()))}}


def overlay_overrides(overlay: dict[str, Any]) -> list[str]:
    """``key=value`` strings for ``--set`` / ``dvc exp run -S`` (values as YAML, which both parse)."""
    return [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
            for key, value in flatten(overlay).items()]


def dvc_command(overlay: dict[str, Any]) -> str:
    """The ``dvc exp run -S ...`` line that trains (and evaluates) the overlay's configuration.

    ``++key=value`` (Hydra's add-or-override, which DVC's ``-S`` parses): a plain ``key=value`` is
    refused for a key params.yaml leaves to its default (``train.gan.r1_gamma``)."""
    return "dvc exp run " + " ".join(f"-S {shlex.quote('++' + item)}" for item in overlay_overrides(overlay))


def overlay_text(overlay: dict[str, Any], header: list[str]) -> str:
    """The overlay file: ``header`` lines as comments, then the YAML."""
    return "".join(f"# {line}\n" for line in header) + yaml.safe_dump(overlay, sort_keys=False)
