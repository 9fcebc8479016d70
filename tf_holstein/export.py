"""Export a trained model as a SavedModel with `step` and `rollout` serving signatures.

    python -m tf_holstein.export --workdir runs/shallow --which best --out exports/shallow

The command exports a training workdir's best or last weights (an interrupted run's
too) as training exports its best model at the end of a run: `OUT/saved_model/` and
`OUT/model.keras`.

The SavedModel needs only TensorFlow to run: complex tensors are split into
float32 real and imaginary parts at the boundary, so any client (TF Serving,
`saved_model_cli`, `pipelines/batch_inference.py`) can feed it.

    step(rho_real, rho_imag [B, L, L], Q, P [B, L])
        -> rho_real, rho_imag [B, L, L], Q, P [B, L], Delta_rho, Delta_Q [B]
    rollout(rho_real, rho_imag, Q, P, n_steps int32 scalar)
        -> the same keys with a step axis: [B, n_steps, ...]
    rollout_order_parameters(rho_real, rho_imag, Q, P, n_steps)
        -> Delta_rho, Delta_Q [B, n_steps] (memory independent of L^2 * n_steps)

`assets/tf_holstein.json` beside the graph records the model's config and
scales, and the dataset's protocol when known.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import keras
import tensorflow as tf
from absl import app, flags

from tf_holstein import cli, files, models, physics, runs
from tf_holstein.cli import FLAGS

SIGNATURES = ("step", "rollout", "rollout_order_parameters")
METADATA_ASSET = "tf_holstein.json"

_STATE_SPEC = [tf.TensorSpec([None, None, None], tf.float32, name="rho_real"),
               tf.TensorSpec([None, None, None], tf.float32, name="rho_imag"),
               tf.TensorSpec([None, None], tf.float32, name="Q"),
               tf.TensorSpec([None, None], tf.float32, name="P")]
_STEPS_SPEC = tf.TensorSpec([], tf.int32, name="n_steps")


def checked_inputs(rho_real: tf.Tensor, rho_imag: tf.Tensor, Q: tf.Tensor, P: tf.Tensor
                   ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """The serving inputs, after checking them: a client gets an InvalidArgumentError naming
    the input instead of a silently broadcast batch or NaN."""
    shape_rho, shape_q = tf.shape(rho_real), tf.shape(Q)
    checks = [
        tf.debugging.assert_equal(shape_rho[1], shape_rho[2], message=(
            "rho_real must be [B, L, L] (square per state)")),
        tf.debugging.assert_equal(tf.shape(rho_imag), shape_rho, message=(
            "rho_imag must have the shape of rho_real [B, L, L]")),
        tf.debugging.assert_equal(tf.shape(P), shape_q,
                                  message="P must have the shape of Q [B, L]"),
        tf.debugging.assert_equal(shape_q, shape_rho[:2], message=(
            "Q and P must be [B, L] with the batch size B and chain length L of rho")),
        *(tf.debugging.assert_all_finite(value, f"{name} holds NaN or inf: the model needs a "
                                                f"finite state")
          for name, value in (("rho_real", rho_real), ("rho_imag", rho_imag), ("Q", Q),
                              ("P", P)))]
    with tf.control_dependencies(checks):
        return (tf.identity(rho_real), tf.identity(rho_imag), tf.identity(Q),
                tf.identity(P))


def _state(rho_real: tf.Tensor, rho_imag: tf.Tensor, Q: tf.Tensor, P: tf.Tensor
           ) -> dict[str, tf.Tensor]:
    """The model's state from the serving inputs, which are checked first."""
    rho_real, rho_imag, Q, P = checked_inputs(rho_real, rho_imag, Q, P)
    return {"rho": tf.complex(rho_real, rho_imag), "Q": Q, "P": P}


def _checked_steps(n_steps: tf.Tensor) -> tf.Tensor:
    """n_steps, after checking that it is at least 1."""
    check = tf.debugging.assert_positive(n_steps, message="n_steps must be >= 1")
    with tf.control_dependencies([check]):
        return tf.identity(n_steps)


def _outputs(state: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    delta_rho, delta_q = physics.order_parameters(state["rho"], state["Q"])
    return {"rho_real": tf.math.real(state["rho"]), "rho_imag": tf.math.imag(state["rho"]),
            "Q": state["Q"], "P": state["P"], "Delta_rho": delta_rho, "Delta_Q": delta_q}


def dataset_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """What an export records of its training dataset's meta.json: the protocol and the
    time per step, which evaluation and batch inference check their data against."""
    return {"data": meta["config"], "time_step": meta["time_step"]}


def export_model(model: models.HolsteinModel, directory: str | os.PathLike,
                 metadata: Mapping[str, Any] | None = None) -> Path:
    """Writes `directory/saved_model/` and `directory/model.keras`, each atomically.

    Returns the SavedModel path. metadata (e.g. the dataset's protocol) is stored in
    the SavedModel's assets with the model's config.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    def step(rho_real: tf.Tensor, rho_imag: tf.Tensor, Q: tf.Tensor, P: tf.Tensor
             ) -> dict[str, tf.Tensor]:
        return _outputs(model.step(_state(rho_real, rho_imag, Q, P)))

    def rollout(rho_real: tf.Tensor, rho_imag: tf.Tensor, Q: tf.Tensor, P: tf.Tensor,
                n_steps: tf.Tensor) -> dict[str, tf.Tensor]:
        return _outputs(model.rollout(_state(rho_real, rho_imag, Q, P),
                                      _checked_steps(n_steps)))

    def rollout_order_parameters(rho_real: tf.Tensor, rho_imag: tf.Tensor, Q: tf.Tensor,
                                 P: tf.Tensor, n_steps: tf.Tensor) -> dict[str, tf.Tensor]:
        return model.rollout(_state(rho_real, rho_imag, Q, P), _checked_steps(n_steps),
                             order_parameters_only=True)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("step", step, input_signature=_STATE_SPEC)
    archive.add_endpoint("rollout", rollout, input_signature=[*_STATE_SPEC, _STEPS_SPEC])
    archive.add_endpoint("rollout_order_parameters", rollout_order_parameters,
                         input_signature=[*_STATE_SPEC, _STEPS_SPEC])

    saved_model = directory / "saved_model"
    files.remove_stale_temporaries(directory)  # what an interrupted export left
    staging = files.create_temporary(saved_model, directory=True)
    try:
        archive.write_out(str(staging), verbose=False)
        (staging / "assets").mkdir(exist_ok=True)
        (staging / "assets" / METADATA_ASSET).write_text(json.dumps(
            {"model_class": type(model).__name__,
             "model_config": json.loads(json.dumps(model.get_config(), default=str)),
             **(metadata or {})}, indent=2, sort_keys=True))
        if saved_model.exists():
            shutil.rmtree(saved_model)
        os.replace(staging, saved_model)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    files.write_atomically(directory / "model.keras", model.save, ".tmp.keras")
    return saved_model


def export_trained(model: models.HolsteinModel, meta: Mapping[str, Any],
                   directory: str | os.PathLike) -> Path:
    """Exports a trained model with what it records of its training dataset (meta.json), as
    training does at the end of a run; returns the SavedModel path."""
    return export_model(model, directory, metadata=dataset_metadata(meta))


def export_run(workdir: str | os.PathLike, which: str, out: str | os.PathLike,
               data: str | os.PathLike | None = None, data_dir: str | os.PathLike = "data",
               overwrite: bool = False) -> Path:
    """Exports a training workdir's `which` ("best" or "last") weights to `out`; returns
    the SavedModel path. data: the run's dataset (default <data_dir>/<its name>), whose
    scales the model needs; an earlier export in `out` is replaced only with `overwrite`."""
    config = runs.read_config(workdir)
    existing = [Path(out) / name for name in ("saved_model", "model.keras")
                if (Path(out) / name).exists()]
    if existing and not overwrite:
        raise ValueError(f"{existing[0]} exists: pass --overwrite to replace it, or another "
                         f"--out")
    model, meta = runs.load_model(workdir, which,
                                  data or Path(data_dir) / config["data"]["name"])
    return export_trained(model, meta, out)


def add_input_checks(saved_model_dir: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Writes to `target` (atomically) an export made before the serving inputs were checked,
    whose signatures now check them (`checked_inputs`, n_steps >= 1) and then run the
    original graphs unchanged: the outputs stay bit for bit. Assets are kept."""
    source, target = Path(saved_model_dir), Path(target)
    loaded = tf.saved_model.load(str(source))
    original = {name: loaded.signatures[name] for name in SIGNATURES}

    def checked(rho_real: tf.Tensor, rho_imag: tf.Tensor, Q: tf.Tensor, P: tf.Tensor
                ) -> dict[str, tf.Tensor]:
        return dict(zip(("rho_real", "rho_imag", "Q", "P"),
                        checked_inputs(rho_real, rho_imag, Q, P)))

    @tf.function(input_signature=_STATE_SPEC)
    def step(rho_real: tf.Tensor, rho_imag: tf.Tensor, Q: tf.Tensor, P: tf.Tensor
             ) -> dict[str, tf.Tensor]:
        return original["step"](**checked(rho_real, rho_imag, Q, P))

    def rollout_signature(name: str) -> Any:
        @tf.function(input_signature=[*_STATE_SPEC, _STEPS_SPEC])
        def rollout(rho_real: tf.Tensor, rho_imag: tf.Tensor, Q: tf.Tensor, P: tf.Tensor,
                    n_steps: tf.Tensor) -> dict[str, tf.Tensor]:
            return original[name](**checked(rho_real, rho_imag, Q, P),
                                  n_steps=_checked_steps(n_steps))
        return rollout

    signatures = {"step": step, **{name: rollout_signature(name) for name in SIGNATURES[1:]}}
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = files.create_temporary(target, directory=True)
    try:
        tf.saved_model.save(loaded, str(staging), signatures=signatures)
        shutil.copytree(source / "assets", staging / "assets", dirs_exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def read_metadata(saved_model_dir: str | os.PathLike) -> dict[str, Any]:
    """The metadata an export stored beside the graph."""
    return json.loads((Path(saved_model_dir) / "assets" / METADATA_ASSET).read_text())


def _define_flags() -> None:
    """The command's own flags, defined only when run as a command (train has a --workdir
    too); --data_dir comes from tf_holstein.cli."""
    flags.DEFINE_string("workdir", None, "the training run's directory (runs/<config> by "
                        "default in train), finished or interrupted")
    flags.DEFINE_enum("which", "best", runs.WEIGHTS, "best: the weights validation kept "
                      "(best.weights.h5); last: the latest checkpoint's")
    flags.DEFINE_string("out", None, "output directory: OUT/saved_model and OUT/model.keras")
    flags.DEFINE_string("data", None, "the run's dataset directory (holding meta.json), whose "
                        "scales the model needs; default <data_dir>/<the run's dataset name>")
    flags.DEFINE_bool("overwrite", False, "replace an earlier export in --out")
    flags.mark_flags_as_required(["workdir", "out"])


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        if FLAGS["config"].present:
            raise ValueError("--config does not apply: the run's config.json sets the model")
        cli.config_from_flags(sections=())  # refuses config fields: they would not apply
        saved_model = export_run(FLAGS.workdir, FLAGS.which, FLAGS.out, data=FLAGS.data,
                                 data_dir=FLAGS.data_dir, overwrite=FLAGS.overwrite)
    except (ValueError, IOError) as e:
        sys.exit(f"export: error: {e}")
    print(json.dumps({"saved_model": str(saved_model),
                      "keras": str(Path(FLAGS.out) / "model.keras"), "which": FLAGS.which}))


def entry_point() -> None:
    """`python -m tf_holstein.export` and the console script `holstein-export`."""
    _define_flags()
    cli.run(main)


if __name__ == "__main__":
    entry_point()
