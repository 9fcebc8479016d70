"""Writes tests/data/shipped_outputs.npz: what every model in saved_models/ predicts from fixed
inputs, so that a change of the model code that moves a shipped model's outputs is caught.

    python tests/make_reference_outputs.py

Run it only when the shipped models themselves change, never to make a failing comparison
pass: test_saved_models.py holds the current code to these outputs.
"""
from pathlib import Path

import numpy as np

from tf_holstein import export, loading, physics

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "saved_models"
OUTPUT = ROOT / "tests" / "data" / "shipped_outputs.npz"
STEPS = 3
NOISE = 0.05  # of Q and P: far above the data's, so that every output moves


def reference_state(name: str) -> dict[str, np.ndarray]:
    """Two pre-quench states of the model's chain length and initial coupling, with noise
    of a fixed seed on Q and P."""
    data = export.read_metadata(SHIPPED / name)["data"]
    rng = np.random.default_rng(0)
    rho, Q, P = physics.initial_state(data["L"], data["g_i"],
                                      NOISE * rng.normal(size=(2, data["L"])),
                                      NOISE * rng.normal(size=(2, data["L"])))
    return {"rho": rho.numpy().astype(np.complex64), "Q": Q.numpy().astype(np.float32),
            "P": P.numpy().astype(np.float32)}


def shipped_outputs(name: str, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{form/quantity/key: array}: each form's rollout of STEPS steps, and the .keras
    model's single step (with PARC's derivatives)."""
    outputs = {}
    for form, path in (("saved_model", SHIPPED / name), ("keras", SHIPPED / name / "model.keras")):
        loaded = loading.load_model(path)
        for key, value in loaded.rollout(state, STEPS).items():
            outputs[f"{form}/rollout/{key}"] = value
    model = loading.load_model(SHIPPED / name / "model.keras").handle
    step = model.step(state, return_derivatives=model.has_derivatives)
    next_state, derivative = step if model.has_derivatives else (step, {})
    outputs.update({f"keras/step/{key}": np.asarray(value) for key, value in next_state.items()})
    outputs.update({f"keras/derivative/{key}": np.asarray(value)
                    for key, value in derivative.items()})
    return outputs


def main() -> None:
    arrays = {}
    for path in sorted(SHIPPED.iterdir()):
        if not (path / "saved_model.pb").exists():
            continue
        state = reference_state(path.name)
        arrays.update({f"{path.name}/input/{key}": value for key, value in state.items()})
        arrays.update({f"{path.name}/{key}": value
                       for key, value in shipped_outputs(path.name, state).items()})
    OUTPUT.parent.mkdir(exist_ok=True)
    np.savez_compressed(OUTPUT, **arrays)
    print(f"wrote {len(arrays)} arrays to {OUTPUT}")


if __name__ == "__main__":
    main()
