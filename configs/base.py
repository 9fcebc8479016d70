"""Typed configuration: frozen dataclasses, composed into named presets.

Every numeric default of the project lives here or in `presets.py`; other
modules receive these objects and never hard-code protocol numbers.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """A quench protocol (SPEC section 2) and the size of its dataset.

    Times are in units of hbar/t; `save_interval` and `pre_steps` count RK4
    steps of length `dt`.
    """

    name: str = "shallow"
    L: int = 16
    g_i: float = 0.5
    g_f: float = 0.8
    noise: float = 1e-4
    dt: float = 0.01
    save_interval: int = 64
    pre_steps: int = 0
    saved_steps: int = 1200
    n_train: int = 64
    n_val: int = 4
    n_test: int = 64
    seed: int = 0
    shard_size: int = 8  # trajectories per TFRecord shard (the unit of resumable work)

    @property
    def dataset_name(self) -> str:
        return f"{self.name}_L{self.L}"

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}

    def validate(self) -> "DataConfig":
        """Raises ValueError naming the first bad field and what to do."""
        problems = []
        if not isinstance(self.L, int) or self.L < 4 or self.L % 2:
            problems.append(f"L must be an even integer >= 4 (half filling on a periodic "
                            f"chain), got L={self.L!r}")
        if not self.dt > 0:
            problems.append(f"dt must be positive, got dt={self.dt!r}")
        if not isinstance(self.save_interval, int) or self.save_interval < 2:
            problems.append(f"save_interval must be an integer >= 2 RK4 steps (a mid-interval "
                            f"state is stored), got save_interval={self.save_interval!r}")
        for field in ("pre_steps", "saved_steps", "n_train", "n_val", "n_test"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 0:
                problems.append(f"{field} must be a non-negative integer, got {field}={value!r}")
        if isinstance(self.saved_steps, int) and self.saved_steps < 1:
            problems.append(f"saved_steps must be >= 1, got saved_steps={self.saved_steps!r}")
        for field in ("g_i", "g_f", "noise"):
            value = getattr(self, field)
            if not value >= 0:
                problems.append(f"{field} must be non-negative, got {field}={value!r}")
        if not isinstance(self.shard_size, int) or self.shard_size < 1:
            problems.append(f"shard_size must be a positive integer, got {self.shard_size!r}")
        if problems:
            raise ValueError("invalid data config: " + "; ".join(problems))
        return self


@dataclasses.dataclass(frozen=True)
class Config:
    """A named experiment: its data protocol (model and training join later)."""

    name: str
    data: DataConfig


def _field_types(obj: Any) -> dict[str, type]:
    return {f.name: type(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def override(config: Config, overrides: Mapping[str, Any]) -> Config:
    """Returns `config` with fields replaced, found by name in its sub-configs.

    A key is either a bare field name (`L`), looked up in every sub-config,
    or dotted (`data.L`). Values are converted to the field's type, so
    strings from the command line work. Unknown keys raise ValueError
    listing the valid ones.
    """
    sections = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                if dataclasses.is_dataclass(getattr(config, f.name))}
    updates: dict[str, dict[str, Any]] = {name: {} for name in sections}
    for key, value in overrides.items():
        section, _, field = key.rpartition(".")
        owners = [section] if section else [s for s, sub in sections.items()
                                            if field in _field_types(sub)]
        if not owners or owners[0] not in sections or \
                field not in _field_types(sections[owners[0]]):
            valid = sorted(f"{s}.{f}" for s, sub in sections.items() for f in _field_types(sub))
            raise ValueError(f"unknown config field {key!r}; valid fields: {', '.join(valid)}")
        if len(owners) > 1:
            raise ValueError(f"config field {key!r} is ambiguous: use one of "
                             f"{', '.join(f'{o}.{field}' for o in owners)}")
        owner = owners[0]
        updates[owner][field] = _convert(value, _field_types(sections[owner])[field], key)
    replaced = {s: dataclasses.replace(sub, **updates[s]) for s, sub in sections.items()
                if updates[s]}
    return dataclasses.replace(config, **replaced)


def _convert(value: Any, kind: type, key: str) -> Any:
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes"):
                    return True
                if value.lower() in ("0", "false", "no"):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind is int:
            as_float = float(value)
            if as_float != int(as_float):
                raise ValueError(value)
            return int(as_float)
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"config field {key!r} expects {kind.__name__}, got {value!r}") from None
