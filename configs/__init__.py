"""Named experiment configs: `get_config("shallow", L=32)`."""
from __future__ import annotations

from typing import Any

from .base import Config, DataConfig, ModelConfig, Stage, TrainConfig, field_types, override, parse_stages
from .presets import PRESETS

__all__ = ["Config", "DataConfig", "ModelConfig", "PRESETS", "Stage", "TrainConfig", "field_types",
           "get_config", "override", "parse_stages"]


def get_config(preset: str, /, **overrides: Any) -> Config:
    """The preset with `overrides` applied; unknown names list the valid ones.

    `preset` is positional-only, so that `name` can be overridden like any field.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown config {preset!r}; valid configs: "
                         f"{', '.join(sorted(PRESETS))}")
    config = override(PRESETS[preset], overrides) if overrides else PRESETS[preset]
    return config.validate()
