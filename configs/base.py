"""Typed configuration: frozen dataclasses, composed into named presets.

Every numeric default of the project lives here or in `presets.py`; other
modules receive these objects and never hard-code protocol numbers.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """A quench protocol (docs/physics.md) and the size of its dataset.

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
        """The dataset's directory under the data directory: its name (each preset's is the
        preset's own; `--name` chooses another, for a protocol changed by other flags)."""
        return self.name

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


# The valid values of the model's string fields.
CHOICES = {"kind": ("cnn", "parc"), "embedding": ("diagonal", "broadcast", "coupling"),
           "integrator_input": ("derivative", "state_and_derivative"),
           "precision": ("float32", "mixed_bfloat16")}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A model (docs/training.md): `cnn` (standard CNN) or `parc`, its networks' size and the
    physics it is built with. `models.build_model` builds it; its `get_config` holds it."""

    kind: str = "cnn"
    channels: int = 16
    n_blocks: int = 1
    dropout: float = 0.2
    kernel_size: int = 3
    # Start the output convolution (PARC: the integrator's) at zero, so that an untrained
    # model's step is the identity (the reference's); initialisation only.
    zero_init_output: bool = True
    # "mixed_bfloat16": convolutions in bfloat16, the rest float32; pays off for wide networks
    # on GPUs and on CPUs with AVX512-BF16 or AMX (benchmarks/models.py --precisions).
    precision: str = "float32"
    # Keep the exact dynamics' invariants of rho: Hermitian, trace-free increments
    # (invariants.conserving) and the initial spectrum along a rollout
    # (invariants.with_spectrum).
    conserve: bool = False
    # Average each step over the particle-hole orbit (symmetries.particle_hole), a symmetry
    # of the exact step at half filling: twice the compute per step, no extra weights.
    particle_hole: bool = False
    # Average each step over the chain's reflection i -> -i (symmetries.reflection), another
    # exact symmetry; with particle_hole over both and their product (four times the compute).
    reflection: bool = False
    # "broadcast": each network also sees Q and P broadcast along rows and columns, so the
    # coupling g (Q_i - Q_j) rho_ij is local at every pixel (networks.broadcast_diagonals);
    # "coupling": it sees (Q_i - Q_j) rho_ij itself (networks.coupling_channels).
    embedding: str = "diagonal"
    # PARC's integrator input: "derivative" (the paper's) or "state_and_derivative".
    integrator_input: str = "derivative"
    # Advance rho exactly under H(Q) with the lattice frozen over the step; the networks learn
    # the rest (physics.frozen_lattice_propagator; g and the time step come from the dataset).
    propagate_rho: bool = False
    # Move the lattice's uniform mode (site means of Q and P), a free oscillator at half
    # filling, exactly instead of by the networks (invariants.with_uniform_mode).
    uniform_mode: bool = False
    # > 0: advance the whole state by a Strang splitting of the exact equations of motion in
    # this many parts per step (physics.split_step); the networks learn its residual.
    split_steps: int = 0
    # Move rho along its unitary orbit after each step so that the total energy stays at its
    # value at the rollout's start (invariants.with_energy; g comes from the dataset).
    conserve_energy: bool = False

    def validate(self) -> "ModelConfig":
        """Raises ValueError naming the first bad field and what to do."""
        for field, choices in CHOICES.items():
            if getattr(self, field) not in choices:
                raise ValueError(f"invalid model config: {field} must be one of "
                                 f"{', '.join(map(repr, choices))}, got "
                                 f"{getattr(self, field)!r}")
        if self.kind == "cnn" and self.integrator_input != "derivative":
            raise ValueError(f"invalid model config: integrator_input="
                             f"{self.integrator_input!r} applies to PARC only (kind='parc')")
        if not isinstance(self.split_steps, int) or self.split_steps < 0:
            raise ValueError(f"invalid model config: split_steps must be a whole number >= 0 "
                             f"(0: no split step), got {self.split_steps!r}")
        if self.split_steps and self.propagate_rho:
            raise ValueError("invalid model config: split_steps replaces propagate_rho "
                             "(choose one)")
        if self.channels < 1 or self.n_blocks < 0 or not 0 <= self.dropout < 1 or \
                self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"invalid model config: need channels >= 1, n_blocks >= 0, "
                             f"0 <= dropout < 1 and kernel_size an odd integer, got {self}")
        return self

    def check_protocol(self, coupling: float | None, time_step: float | None) -> None:
        """Raises ValueError if an option needs the protocol's coupling g (after the quench)
        or time per step and it is not given."""
        g, dt = "coupling g (after the quench)", "time step (> 0)"
        known = {g: coupling is not None and math.isfinite(coupling),
                 dt: time_step is not None and time_step > 0}
        for name, needs in (("propagate_rho", (g, dt)), ("split_steps", (g, dt)),
                            ("conserve_energy", (g,)), ("uniform_mode", (dt,))):
            if getattr(self, name) and not all(known[need] for need in needs):
                raise ValueError(f"{name} needs the protocol's {' and '.join(needs)}; got "
                                 f"coupling={coupling!r}, time_step={time_step!r}")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One curriculum stage: `epochs` of `batches_per_epoch` optimizer steps each,
    predicting `n_step` steps from inputs with noise of std `noise`."""

    epochs: int
    n_step: int
    noise: float
    batches_per_epoch: int

    def __str__(self) -> str:
        return f"{self.epochs}:{self.n_step}:{self.noise:g}:{self.batches_per_epoch}"


def parse_stages(text: str) -> tuple[Stage, ...]:
    """`"20:1:0.02:8192,40:8:0.02:8192"` (epochs:n_step:noise:batches_per_epoch, ...)."""
    stages = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) != 4:
            raise ValueError(f"bad stage {item!r}: write epochs:n_step:noise:batches_per_epoch, "
                             f"stages separated by commas")
        try:
            stages.append(Stage(int(parts[0]), int(parts[1]), float(parts[2]), int(parts[3])))
        except ValueError:
            raise ValueError(f"bad stage {item!r}: epochs, n_step and batches_per_epoch are "
                             f"integers, noise a number") from None
    return tuple(stages)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and the curriculum (docs/training.md); `batch_size` is the global batch."""

    lr: float = 1e-4
    weight_decay: float = 1e-5
    batch_size: int = 64
    eta_min: float = 0.1
    warmup_steps: int = 500
    clip_norm: float = 1.0
    derivative_weight: float = 1.0  # PARC: weight of the derivative loss terms
    # Weight of loss terms on Delta_rho and Delta_Q (relative RMS errors; 0: none).
    order_parameter_weight: float = 0.0
    stages: tuple[Stage, ...] = (Stage(20, 1, 0.02, 8192), Stage(40, 8, 0.02, 8192))
    train_seed: int = 0
    val_batches: int = 8  # batches of validation windows for the multi-step loss
    val_rollout_steps: int = 0  # steps of the validation rollout metric; 0: whole trajectories
    # The best model: by validation rollout RMSE / std ("rollout"), by the validation loss
    # within the latest stage ("loss"), or by the rollouts' autocorrelation ("autocorrelation",
    # for chaotic quenches whose trajectories no model can follow for long).
    select_by: str = "rollout"
    jit_compile: bool = True  # XLA training steps on GPUs (on CPUs it measured slower)
    # Warm start: another run's best.weights.h5 (or a model.keras) of the same model kind and
    # size, e.g. to continue a finished run with a further curriculum or to move to another L.
    init_from: str = ""
    # Weight averaging: momentum of an exponential moving average of the weights (0: off).
    # Validation, the best model and the export then use the averaged weights, which take
    # the optimizer's step-to-step noise out of long-rollout behaviour such as oscillation
    # periods.
    ema: float = 0.0
    # Independent rollout loops per replica's batch in training, run side by side on a CPU's
    # cores (`HolsteinModel.rollout`'s `chains`); on GPUs, where they would only shrink the
    # kernels, the trainer runs one.
    chains: int = 1

    def validate(self) -> "TrainConfig":
        problems = []
        if not self.stages:
            problems.append("at least one curriculum stage is needed")
        for stage in self.stages:
            if stage.epochs < 1 or stage.n_step < 1 or stage.batches_per_epoch < 1 or \
                    stage.noise < 0:
                problems.append(f"stage {stage} needs epochs, n_step, batches_per_epoch >= 1 "
                                f"and noise >= 0")
        if self.lr <= 0 or self.batch_size < 1 or not 0 <= self.eta_min <= 1:
            problems.append("need lr > 0, batch_size >= 1 and 0 <= eta_min <= 1")
        if self.order_parameter_weight < 0 or self.derivative_weight < 0:
            problems.append("loss weights must be >= 0")
        if not 1 <= self.chains <= self.batch_size:
            problems.append(f"chains must be in [1, batch_size], got {self.chains}")
        if not 0 <= self.ema < 1:
            problems.append(f"ema is a moving-average momentum in [0, 1), got {self.ema}")
        if self.select_by not in ("rollout", "loss", "autocorrelation"):
            problems.append(f"select_by must be 'rollout', 'loss' or 'autocorrelation', got "
                            f"{self.select_by!r}")
        if not self.clip_norm > 0:
            problems.append(f"clip_norm (the gradients' largest global norm) must be > 0, got "
                            f"{self.clip_norm}")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.val_batches < 1:
            problems.append(f"val_batches must be >= 1, got {self.val_batches}")
        if self.val_rollout_steps < 0:
            problems.append(f"val_rollout_steps must be >= 0 (0: whole trajectories), got "
                            f"{self.val_rollout_steps}")
        if problems:
            raise ValueError("invalid train config: " + "; ".join(problems))
        return self

    def check_dataset(self, dataset: str, trajectory_steps: int, train_trajectories: int
                      ) -> None:
        """Raises ValueError if the curriculum cannot run on a dataset whose trajectories hold
        `trajectory_steps` saved steps: a stage whose windows are longer would wait forever
        for its first batch, an empty training split has nothing to learn or scale by."""
        problems = []
        if not train_trajectories:
            problems.append(f"the dataset {dataset} has no training trajectories: "
                            f"generate it with --n_train >= 1")
        problems += [f"stage {stage} predicts n_step = {stage.n_step} steps, but the dataset's "
                     f"trajectories hold {trajectory_steps}: use n_step <= {trajectory_steps}"
                     for stage in self.stages if stage.n_step > trajectory_steps]
        if problems:
            raise ValueError("cannot train: " + "; ".join(problems))

    @property
    def total_steps(self) -> int:
        return sum(s.epochs * s.batches_per_epoch for s in self.stages)


@dataclasses.dataclass(frozen=True)
class Config:
    """A named experiment: data protocol, model and training."""

    name: str
    data: DataConfig
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()

    def validate(self) -> "Config":
        self.data.validate()
        self.model.validate()
        self.train.validate()
        return self


def _field_types(obj: Any) -> dict[str, type]:
    return {f.name: type(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def field_types(config: Config) -> dict[str, dict[str, type]]:
    """{section: {field: type}} of every overridable field."""
    return {f.name: _field_types(getattr(config, f.name)) for f in dataclasses.fields(config)
            if dataclasses.is_dataclass(getattr(config, f.name))}


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
    if kind is tuple:
        return parse_stages(value) if isinstance(value, str) else tuple(value)
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
