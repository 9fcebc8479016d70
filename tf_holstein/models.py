"""The paper's two models as Keras one-step models: the standard CNN and PARC
(docs/training.md).

One step advances a state (`tf_holstein.codec`) by the dataset's prediction interval:

    standard CNN:  u -> u + N(u)
    PARC:          u -> u + S(D(u)),  D(u) ~ du/dt at the mid-interval state

Each network sees the state's 4-channel L x L image, its inputs and outputs scaled by the
training data's scales (`tf_holstein.networks`). The architecture and every constant follow
the reference PyTorch implementation, so that its checkpoints load (`tf_holstein.convert`)
and reproduce its outputs. The options beyond the paper (`ModelConfig`, all off by default)
add exact physics around the networks: symmetry orbits (`tf_holstein.symmetries`), and a
built-in physics step, the spectrum, the uniform mode and the energy
(`tf_holstein.constraints`). `rollout` feeds steps back (`tf_holstein.autoregressive`).

With `precision="mixed_bfloat16"` the networks' convolutions compute in bfloat16
(`tf_holstein.layers`); the weights, the state and its update, the scalings and the layer
norms stay float32, and the state interface keeps its dtypes.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import keras
import tensorflow as tf

from tf_holstein import autoregressive
from tf_holstein.codec import State, decode, encode, state_mask
from tf_holstein.configs import ModelConfig
from tf_holstein.constraints import Constraints
from tf_holstein.networks import ScaledNetwork, scaled_network, validate_scales
from tf_holstein.symmetries import Orbit

MODEL_FIELDS = tuple(field.name for field in dataclasses.fields(ModelConfig))


class HolsteinModel(keras.Model):
    """Common part of the two models: the state interface and one step, with its physics.

    Built from its `ModelConfig`, the dataset's scales and, for the options that need them,
    the protocol's coupling g (after the quench) and time per step. Subclasses define
    `_advance`, the networks' increment on images. The weights do not depend on L, so the
    model is built at construction and runs on any chain length.
    """

    kind: str
    has_derivatives = False

    def __init__(self, config: ModelConfig, scales: Mapping[str, float],
                 coupling: float | None = None, time_step: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        config.validate()
        if config.kind != self.kind:
            raise ValueError(f"{type(self).__name__} is kind {self.kind!r}, got a config of "
                             f"kind {config.kind!r} (build it with models.build_model)")
        self.config = config
        self.scales = validate_scales(scales)
        self.coupling = None if coupling is None else float(coupling)
        self.time_step = None if time_step is None else float(time_step)
        self._constraints = Constraints(config, self.coupling, self.time_step)
        self._orbit = Orbit([name for name in ("particle_hole", "reflection")
                             if getattr(config, name)])
        self._rollouts = autoregressive.Rollouts(self)

    def _network(self, inputs: Sequence[str], outputs: str, zero_init_output: bool,
                 name: str) -> ScaledNetwork:
        return scaled_network(self.scales, inputs, outputs, self.config, zero_init_output, name)

    def _admissible(self, image: tf.Tensor, network: ScaledNetwork,
                    inputs: Sequence[tf.Tensor], training: bool, rate: bool = False
                    ) -> tf.Tensor:
        """A network's output at `inputs` as a state increment (or with `rate` a
        derivative): masked to the state's entries, then adjusted by the constraints."""
        increment = network(inputs, training=training, output_mask=state_mask(image))
        return self._constraints.adjust(image, increment, rate)

    def _advance(self, image: tf.Tensor, training: bool
                 ) -> tuple[tf.Tensor, tf.Tensor | None]:
        """(the networks' increment to the constraints' base step, derivative image or
        None), images `[batch, L, L, 4]` in physical units."""
        raise NotImplementedError

    def invariants(self, image: tf.Tensor) -> list[tf.Tensor | None]:
        """What the constraints keep fixed along a rollout starting at `image`."""
        return self._constraints.measure(image)

    def step_image(self, image: tf.Tensor, training: bool,
                   invariants: list[tf.Tensor | None]) -> tuple[tf.Tensor, tf.Tensor | None]:
        """One step on images: the base step plus the networks' increment (averaged over the
        symmetry orbit), projected onto the rollout's `invariants`; and the derivative image
        (PARC) or None."""
        increment, derivative = self._orbit.average(self._advance, image, training)
        next_image = self._constraints.base_step(image) + increment
        return self._constraints.project(next_image, invariants), derivative

    def call(self, state: Mapping[str, Any], training: bool | None = None) -> State:
        """The next state; see `step`."""
        return self.step(state, training=bool(training))

    def step(self, state: Mapping[str, Any], training: bool = False,
             return_derivatives: bool = False) -> State | tuple[State, State]:
        """One prediction step: the next state, and with `return_derivatives` (PARC only)
        also the differentiator's du/dt `{'rho', 'Q', 'P'}` in physical units (per unit time)."""
        autoregressive.check_derivatives(self, return_derivatives)
        image = encode(state)
        next_image, derivative = self.step_image(image, training, self.invariants(image))
        if return_derivatives:
            return decode(next_image), decode(derivative)
        return decode(next_image)

    def rollout(self, state: Mapping[str, Any], n_steps: int | tf.Tensor, *, training: bool = False,
                return_derivatives: bool = False, order_parameters_only: bool = False,
                jit_compile: bool | None = None, chains: int | None = None
                ) -> State | tuple[State, State]:
        """`n_steps` steps, each prediction fed back as the next input (`autoregressive`).

        Returns the states after steps 1..n_steps, `{'rho': [batch, n_steps, L, L], 'Q', 'P':
        [batch, n_steps, L]}` (the initial state is not included); with `return_derivatives`
        also the derivatives at every step, as `step` does; with `order_parameters_only` just
        `{'Delta_rho', 'Delta_Q': float32 [batch, n_steps]}`, so that memory stays small.
        `chains` independent loops roll out contiguous slices of the batch side by side
        (`autoregressive.CHAIN_BATCH`); by default one in training and on GPUs, and in CPU
        inference one below CHAIN_MIN_BATCH trajectories, else about one per CHAIN_BATCH (at
        least two). Differentiable, with dropout if `training`. Called eagerly it runs one
        cached `tf.function` per (n_steps, flags), XLA-compiled if `jit_compile`; by default
        XLA is used for small inference batches, where it is faster (benchmarks/models.py),
        and never in training: TensorFlow cannot differentiate an XLA-compiled while loop
        from outside it. Inside a `tf.function` the rollout is traced inline, and the
        enclosing function decides on XLA.
        """
        return self._rollouts(state, n_steps, training=training,
                              return_derivatives=return_derivatives,
                              order_parameters_only=order_parameters_only,
                              jit_compile=jit_compile, chains=chains)

    def get_config(self) -> dict[str, Any]:
        """Keras' fields, the scales, every `ModelConfig` field and the protocol."""
        return {**super().get_config(), "scales": dict(self.scales),
                **dataclasses.asdict(self.config), "coupling": self.coupling,
                "time_step": self.time_step}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "HolsteinModel":
        """The model of a `get_config`, also of one written before a `ModelConfig` field
        existed (the field then takes its default, which is the older models' behaviour)."""
        config = dict(config)
        fields = {name: config.pop(name) for name in MODEL_FIELDS if name in config}
        fields.setdefault("kind", cls.kind)
        return super().from_config({**config, "config": ModelConfig(**fields)})


@keras.saving.register_keras_serializable(package="tf_holstein")
class HolsteinCNN(HolsteinModel):
    """The standard CNN of the paper (shallow quench): u(t + dt) = u + N(u).

    N maps (rho, Q, P) scaled by the state scales to the increments scaled by the delta
    scales; its output conv starts at zero, so an untrained model's step is the identity.
    """

    kind = "cnn"

    def __init__(self, config: ModelConfig, scales: Mapping[str, float], **kwargs: Any) -> None:
        super().__init__(config, scales, **kwargs)
        self.cnn = self._network([""], "delta_", config.zero_init_output, name="cnn")
        self.built = True

    def _advance(self, image: tf.Tensor, training: bool) -> tuple[tf.Tensor, None]:
        return self._admissible(image, self.cnn, [image], training), None


@keras.saving.register_keras_serializable(package="tf_holstein")
class HolsteinPARC(HolsteinModel):
    """PARC (deep quench): a differentiator D(u) ~ du/dt and an integrator S(du/dt) ~ delta u.

    u(t + dt) = u + S(D(u)). The differentiator's output is in physical units (per unit
    time) and is trained against du/dt at the mid-interval state. Only the integrator's
    output conv starts at zero. With `integrator_input="state_and_derivative"` the
    integrator also sees the state (as PARCv2 does), so that it can correct errors of its
    input state instead of only integrating D(u).
    """

    kind = "parc"
    has_derivatives = True

    def __init__(self, config: ModelConfig, scales: Mapping[str, float], **kwargs: Any) -> None:
        super().__init__(config, scales, **kwargs)
        self.differentiator = self._network([""], "d", False, name="differentiator")
        # The integrator's inputs by their scales' prefixes: the state '' and its rate 'd'.
        self._integrator_inputs = ("", "d") if config.integrator_input == "state_and_derivative" \
            else ("d",)
        self.integrator = self._network(self._integrator_inputs, "delta_",
                                        config.zero_init_output, name="integrator")
        self.built = True

    def _advance(self, image: tf.Tensor, training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        # Decoding then encoding the derivative, as the reference does, zeroes the
        # off-diagonal entries of the Q and P channels: the mask does the same.
        derivative = self._admissible(image, self.differentiator, [image], training, rate=True)
        images = {"": image, "d": derivative}
        inputs = [images[prefix] for prefix in self._integrator_inputs]
        return self._admissible(image, self.integrator, inputs, training), derivative


MODELS: dict[str, type[HolsteinModel]] = {"cnn": HolsteinCNN, "parc": HolsteinPARC}


def build_model(config: ModelConfig, scales: Mapping[str, float], coupling: float | None = None,
                time_step: float | None = None) -> HolsteinModel:
    """The untrained model of `config` for data of `scales` (a dataset's meta.json holds
    them), told the protocol's coupling g after the quench and time per step, which
    `propagate_rho`, `split_steps`, `uniform_mode` and `conserve_energy` need."""
    config.validate()
    return MODELS[config.kind](config, scales, coupling=coupling, time_step=time_step)


def warm_start(model: HolsteinModel, path: str | Path) -> None:
    """Copies the trainable weights saved at `path` (a `.weights.h5` or `.keras` file of the
    same kind and size) into `model`, keeping `model`'s scales: those of its own data, which
    may be another L."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"cannot warm-start from {path}: no such file (give a run's "
                         f"best.weights.h5 or an exported model.keras)")
    if path.name.endswith(".keras"):
        source = keras.saving.load_model(str(path), compile=False)
    elif path.name.endswith(".weights.h5"):
        source = type(model).from_config(model.get_config())
        try:
            source.load_weights(str(path))
        except ValueError as e:
            raise ValueError(f"cannot warm-start from {path}: its weights do not fit a "
                             f"{type(model).__name__} with {model.config} ({e})") from None
    else:
        raise ValueError(f"cannot warm-start from {path}: expected a .weights.h5 or .keras file")
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    if type(source) is not type(model) or \
            [tuple(v.shape) for v in source.trainable_variables] != shapes:
        raise ValueError(f"cannot warm-start from {path}: it holds a {type(source).__name__} "
                         f"whose weights do not fit a {type(model).__name__} with "
                         f"{model.config}")
    for target, value in zip(model.trainable_variables, source.trainable_variables):
        target.assign(value)
