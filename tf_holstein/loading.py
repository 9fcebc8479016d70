"""Models ready to roll out: a saved model (a `.keras` file, a SavedModel, an export or a
training workdir) or a classical integrator (`tf_holstein.baselines`), behind the one
`rollout.LoadedModel` interface that scoring, the analyses and the benchmarks use; and the
check that a model and a dataset share their protocol (time step, coupling, chain length).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf

from tf_holstein import baselines, export, models, rollout


def load(spec: str | Path, meta: Mapping[str, Any]) -> rollout.LoadedModel:
    """The classical integrator that `spec` names (`baselines.is_baseline`), set up for the
    protocol of the dataset `meta`, or else the saved model at `spec` (`load_model`)."""
    if baselines.is_baseline(str(spec)):
        return baselines.baseline_model(str(spec), meta)
    return load_model(spec)


def resolve_model_path(path: str | Path) -> Path:
    """The model file or SavedModel directory that `path` names.

    path: a `.keras` file, a SavedModel directory, an export directory (holding
    `saved_model/` or `model.keras`) or a training workdir (holding `export/`); the
    SavedModel, the artefact that ships, is preferred over the `.keras` file.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix != ".keras":
            raise ValueError(f"{path} is not a .keras file; pass a .keras model, a SavedModel "
                             f"directory or a training workdir")
        return path
    candidates = [path, path / "saved_model", path / "export" / "saved_model",
                  path / "model.keras", path / "export" / "model.keras"]
    for candidate in candidates:
        if candidate.suffix == ".keras" and candidate.is_file():
            return candidate
        if (candidate / "saved_model.pb").is_file():
            return candidate
    raise FileNotFoundError(f"no model at {path}: expected a .keras file, a SavedModel "
                            f"directory, or a training workdir with export/saved_model or "
                            f"export/model.keras")


def load_model(path: str | Path) -> rollout.LoadedModel:
    """Loads a model (see `resolve_model_path`) behind one rollout interface.

    A `.keras` model runs in-process (`HolsteinModel.rollout`); a SavedModel through its
    `rollout` serving signature, exactly as a deployment would.
    """
    path = resolve_model_path(path)
    if path.suffix == ".keras":
        model = keras.saving.load_model(str(path))
        if not isinstance(model, models.HolsteinModel):
            raise ValueError(f"{path} holds a {type(model).__name__}, not a tf-holstein model")
        return rollout.LoadedModel(path, "keras", rollout.keras_rollout(model),
                                   {"model_class": type(model).__name__,
                                    "model_config": json.loads(json.dumps(model.get_config(),
                                                                          default=str))},
                                   model, precision=model.config.precision)
    loaded = tf.saved_model.load(str(path))
    if "rollout" not in loaded.signatures:
        raise ValueError(f"the SavedModel at {path} has no 'rollout' signature (it has "
                         f"{', '.join(loaded.signatures) or 'none'}); export it with "
                         f"tf_holstein.export")
    signature = loaded.signatures["rollout"]

    def saved_model_rollout(state: Mapping[str, np.ndarray], n_steps: int) -> rollout.State:
        rho = tf.constant(state["rho"], tf.complex64)
        out = signature(rho_real=tf.math.real(rho), rho_imag=tf.math.imag(rho),
                        Q=tf.constant(state["Q"], tf.float32),
                        P=tf.constant(state["P"], tf.float32),
                        n_steps=tf.constant(n_steps, tf.int32))
        return {"rho": tf.complex(out["rho_real"], out["rho_imag"]).numpy(),
                "Q": out["Q"].numpy(), "P": out["P"].numpy()}

    metadata_file = path / "assets" / export.METADATA_ASSET
    metadata = export.read_metadata(path) if metadata_file.exists() else {}
    return rollout.LoadedModel(path, "saved_model", saved_model_rollout, metadata, loaded,
                               precision=metadata.get("model_config", {}).get("precision",
                                                                              "float32"))


def check_protocol(metadata: Mapping[str, Any], meta: Mapping[str, Any],
                   allow_other_L: bool = False) -> None:
    """Refuses a dataset whose prediction interval or final coupling differ from the
    model's training data (when the export recorded them): its steps would not match.

    Another chain length is refused too unless `allow_other_L` (as batch inference does):
    the networks are convolutional and run on any chain, but were trained on one.
    """
    trained = metadata.get("data")
    if not trained:
        return
    problems = []
    if trained["L"] != meta["L"] and not allow_other_L:
        problems.append(f"the model was trained on L = {trained['L']}, the dataset has "
                        f"L = {meta['L']} (pass --allow_other_L to run it there anyway)")
    if "time_step" in metadata and not math.isclose(metadata["time_step"], meta["time_step"],
                                                    rel_tol=1e-9):
        problems.append(f"the model predicts steps of {metadata['time_step']:g} hbar/t, the "
                        f"dataset is saved every {meta['time_step']:g}")
    if not math.isclose(trained["g_f"], meta["config"]["g_f"], rel_tol=1e-9):
        problems.append(f"the model was trained at g_f = {trained['g_f']:g}, the dataset "
                        f"quenches to g_f = {meta['config']['g_f']:g}")
    if problems:
        raise ValueError("model and dataset do not match: " + "; ".join(problems))
