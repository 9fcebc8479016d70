"""Where a model's rollouts put the energy: the parts of the conserved energy along rollouts.

    python scripts/energy_budget.py --model runs/parc2 --data data/deep_L32 --n 8
    python scripts/energy_budget.py --model exact --data <smoke_deep dataset> --n 2   # seconds

Rolls the model (a run, export, SavedModel or `.keras` file, or `exact` for the simulator)
out from the first `--n` initial states of the split, as far as the stored trajectories
go, and prints for the truth and the rollouts, averaged over the trajectories at the steps
`--steps`: the four parts of the energy (`physics.energy_parts`: hopping, coupling,
lattice potential and kinetic); the uniform lattice displacement mean_i Q_i; the RMS of Delta_Q; and the phase of
sum_i rho_{i+1,i} (real, phase 0, for states symmetric under spatial reflection; a drift
of it moves all momenta together). A rollout whose
hopping energy climbs towards the band's top (+2L t/pi) has scrambled its electrons even if
rho's spectrum, which `conserve` keeps, is intact.
"""
from __future__ import annotations

import argparse
from typing import Any, Mapping, Sequence

import numpy as np

from tf_holstein import loading, physics, records

def budget(states: Mapping[str, np.ndarray], g: float, steps: Sequence[int]
           ) -> dict[str, Any]:
    """Trajectory means at `steps` of the energy parts (`physics.energy_parts`), mean Q,
    RMS Delta_Q and the bond phase."""
    rho = np.asarray(states["rho"], np.complex128)
    Q, P = np.asarray(states["Q"], np.float64), np.asarray(states["P"], np.float64)
    parts = {name: value.numpy() for name, value in physics.energy_parts(rho, Q, P, g).items()}
    delta_q = physics.order_parameters(rho, Q)[1].numpy()
    bonds = np.diagonal(np.roll(rho, -1, axis=-2), axis1=-2, axis2=-1).sum(-1)
    return {"steps": list(steps),
            **{name: [float(value[:, s].mean()) for s in steps] for name, value in parts.items()},
            "mean_Q": [float(Q[:, s].mean()) for s in steps],
            "rms_Delta_Q": [float(np.sqrt((delta_q[:, s] ** 2).mean())) for s in steps],
            "bond_phase": [float(np.angle(bonds[:, s]).mean()) for s in steps]}


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="model path, or a baseline spec (exact, rk4:DT, ...)")
    parser.add_argument("--data", required=True, help="dataset directory")
    parser.add_argument("--split", default="test", help="split whose trajectories to follow")
    parser.add_argument("--n", type=int, default=8, help="trajectories")
    parser.add_argument("--steps", default="0,50,250,1000", help="steps to print")
    args = parser.parse_args(argv)
    truth = records.load_split(args.data, args.split)
    meta = truth["meta"]
    steps = [min(int(s), meta["T"]) for s in args.steps.split(",")]
    model = loading.load(args.model, meta)
    initial = {key: truth[key][:args.n, 0] for key in records.STATE_KEYS}
    predicted = model.rollout(initial, meta["T"])
    rollouts = {key: np.concatenate([initial[key][:, None], predicted[key]], axis=1)
                for key in records.STATE_KEYS}
    out = {}
    for name, states in (("truth", {k: truth[k][:args.n] for k in records.STATE_KEYS}),
                         ("model", rollouts)):
        out[name] = budget(states, meta["config"]["g_f"], steps)
        for key, values in out[name].items():
            print(f"{name:5s} {key:18s} " + " ".join(f"{v:9.3f}" for v in values))
    return out


if __name__ == "__main__":
    main()
