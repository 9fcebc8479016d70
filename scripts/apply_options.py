"""A trained model with other weight-free options: the same weights, another step.

    python scripts/apply_options.py runs/parc2/export/model.keras /tmp/parc2_reflection.keras \
        reflection=true
    python scripts/apply_options.py runs/parc2/export/model.keras /tmp/parc2_uniform.keras \
        uniform_mode=true time_step=2.56
    python -m tf_holstein.evaluate --model /tmp/parc2_reflection.keras --data data/deep_L32

Options that add no weights (`particle_hole`, `reflection`, `uniform_mode` with `time_step`,
`propagate_rho` with `coupling` and `time_step`, `conserve`, `conserve_energy` with
`coupling`) change how a model steps, not what it learned: applying them to a model trained
without them asks whether the option alone, post hoc, changes its rollouts. Values are JSON.
"""
from __future__ import annotations

import argparse
import json
from typing import Sequence

import keras

from tf_holstein import models

WEIGHT_FREE = ("particle_hole", "reflection", "uniform_mode", "propagate_rho", "time_step",
               "coupling", "conserve", "conserve_energy")


def apply_options(source: str, target: str, options: dict) -> models.HolsteinModel:
    """Saves to `target` the `.keras` model at `source` with `options` set; returns it."""
    unknown = sorted(set(options) - set(WEIGHT_FREE))
    if unknown:
        raise SystemExit(f"apply_options: {', '.join(unknown)} would change the weights; "
                         f"weight-free options: {', '.join(WEIGHT_FREE)}")
    model = keras.saving.load_model(source, compile=False)
    changed = type(model).from_config({**model.get_config(), **options})
    changed.set_weights(model.get_weights())
    changed.save(target)
    return changed


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("source", help="a trained model's .keras file")
    parser.add_argument("target", help="where to write the changed .keras file")
    parser.add_argument("options", nargs="+", help="NAME=JSON_VALUE, e.g. reflection=true")
    args = parser.parse_args(argv)
    options = {}
    for pair in args.options:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"apply_options: expected NAME=VALUE, got {pair!r}")
        options[name] = json.loads(value)
    apply_options(args.source, args.target, options)
    print(f"wrote {args.target} with {options}")


if __name__ == "__main__":
    main()
