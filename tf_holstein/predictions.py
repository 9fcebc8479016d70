"""Rollouts made elsewhere, by any framework: a predictions file (`.npz` as
pipelines/batch_inference.py writes it, or netCDF) read and checked, and replayed as a
rollout so that `scoring.evaluate_predictions` scores it exactly as a model's.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from tf_holstein import metrics, netcdf, physics, records, rollout


def read_predictions(path: str | Path) -> dict[str, np.ndarray]:
    """The rollouts in a predictions `.npz` as pipelines/batch_inference.py writes them:
    `index` int [N] (trajectory numbers of a split), `Delta_rho`, `Delta_Q` [N, steps+1] and
    optionally `rho` complex [N, steps+1, L, L], `Q`, `P` [N, steps+1, L], all three or none;
    step 0 is the initial state; or the same as netCDF (`.nc`, `python -m tf_holstein.netcdf
    --predictions`). Non-finite values are allowed (a diverged rollout)."""
    if Path(path).suffix == ".nc":
        arrays = netcdf.predictions_from_netcdf(path)
    else:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path} is not a readable .npz of arrays (or a .nc netCDF "
                             f"file): {e}") from None
    missing = [key for key in ("index", *metrics.ORDER_PARAMETERS) if key not in arrays]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: a predictions file holds index, "
                         f"Delta_rho, Delta_Q and optionally rho, Q, P (the layout of "
                         f"pipelines/batch_inference.py)")
    states = [key for key in records.STATE_KEYS if key in arrays]
    if states and len(states) < len(records.STATE_KEYS):
        raise ValueError(f"{path} holds {', '.join(states)} but not all of rho, Q, P: give "
                         f"every state array or none")
    index, shape = arrays["index"], arrays["Delta_rho"].shape
    if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
        raise ValueError(f"{path}: index must be integers [N], got {index.dtype} "
                         f"{list(index.shape)}")
    if len(np.unique(index)) != len(index):
        raise ValueError(f"{path}: index names a trajectory more than once")
    if len(shape) != 2 or shape[0] != len(index) or arrays["Delta_Q"].shape != shape:
        raise ValueError(f"{path}: Delta_rho {list(shape)} and Delta_Q "
                         f"{list(arrays['Delta_Q'].shape)} must both be [N, steps+1] with "
                         f"N = {len(index)}, the length of index")
    if states:
        L = arrays["Q"].shape[-1]
        for key, tail in (("rho", (L, L)), ("Q", (L,)), ("P", (L,))):
            if arrays[key].shape != (*shape, *tail):
                raise ValueError(f"{path}: {key} has shape {list(arrays[key].shape)}, "
                                 f"expected {[*shape, *tail]} beside Delta_rho {list(shape)}")
    return {key: arrays[key] for key in ("index", *metrics.ORDER_PARAMETERS, *states)}


def replay(predictions: Mapping[str, np.ndarray], batches: Iterator[dict[str, np.ndarray]],
           source: str) -> tuple[rollout.RolloutFn, Iterator[dict[str, np.ndarray]]]:
    """Stored rollouts (`read_predictions`) as a rollout for `rollout.against_truth`, with
    the truth `batches` it is to be run on (wrapped to follow them): each batch is answered
    with the stored rows of its trajectory indices, chunk after chunk; the states if stored,
    else the order parameters alone. Step 0 must be the truth's initial state, to float32
    rounding (of a mean over L sites for the order parameters), else the predictions were
    made from another split, dataset or start step."""
    row_of = {int(i): row for row, i in enumerate(predictions["index"])}
    keys = [key for key in records.STATE_KEYS if key in predictions] or \
        list(metrics.ORDER_PARAMETERS)
    cursor: dict[str, Any] = {}

    def followed() -> Iterator[dict[str, np.ndarray]]:
        for batch in batches:
            cursor.update(rows=np.array([row_of[int(i)] for i in batch["index"]]), step=0,
                          index=batch["index"])
            yield batch

    def replayed(state: Mapping[str, np.ndarray], n_steps: int) -> rollout.State:
        rows, step = cursor["rows"], cursor["step"]
        if step == 0:
            _check_start(predictions, rows, state, cursor["index"], source)
        cursor["step"] = step + n_steps
        return {key: predictions[key][rows, step + 1:step + 1 + n_steps] for key in keys}

    return replayed, followed()


def _check_start(predictions: Mapping[str, np.ndarray], rows: np.ndarray,
                 state: Mapping[str, np.ndarray], index: np.ndarray, source: str) -> None:
    """Refuses stored rollouts whose step 0 is not the truth's initial `state`."""
    delta_rho, delta_q = (np.asarray(x) for x in physics.order_parameters(
        np.asarray(state["rho"], np.complex128), np.asarray(state["Q"], np.float64)))
    # {key: (expected, the values it is made of, how many of them it sums)}: a stored state
    # is a copy, equal up to one float32 rounding of its values; an order parameter is a
    # mean over the L sites that its producer may have summed in float32, one rounding each.
    L = state["Q"].shape[-1]
    expected = {**{key: (state[key], state[key], 1) for key in records.STATE_KEYS
                   if key in predictions},
                "Delta_rho": (delta_rho, state["rho"], L), "Delta_Q": (delta_q, state["Q"], L)}
    for key, (value, parts, terms) in expected.items():
        tolerance = 2 * terms * float(np.finfo(np.float32).eps) * float(np.max(np.abs(parts)))
        with np.errstate(invalid="ignore"):
            difference = np.abs(predictions[key][rows, 0] - value).reshape(len(rows), -1)
        wrong = np.flatnonzero(~(difference.max(axis=1) <= tolerance))  # NaN is wrong too
        if wrong.size:
            first = wrong[0]
            raise ValueError(
                f"{source}: row {rows[first]} (index {index[first]}) does not start at "
                f"trajectory {index[first]}'s initial state in the split ({key} differs by "
                f"{difference[first].max():.3g}): each array holds steps + 1 entries, entry 0 "
                f"being the initial state; were the predictions made from another split, "
                f"dataset or start step?")
