"""Named experiment configs: `get_config("shallow", L=32)`."""
from __future__ import annotations

from typing import Any

from .base import Config, DataConfig, ModelConfig, Stage, TrainConfig, field_types, override, parse_stages
from .presets import PRESETS

__all__ = ["Config", "DataConfig", "ModelConfig", "PRESETS", "Stage", "TrainConfig", "field_types",
           "get_config", "override", "parse_stages"]


def get_config(name: str, **overrides: Any) -> Config:
    """The preset `name` with `overrides` applied; unknown names list the valid ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown config {name!r}; valid configs: {', '.join(sorted(PRESETS))}")
    config = override(PRESETS[name], overrides) if overrides else PRESETS[name]
    return config.validate()
