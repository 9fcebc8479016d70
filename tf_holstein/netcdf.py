"""python -m tf_holstein.netcdf: a dataset split or a predictions file as netCDF-4 (HDF5).

    python -m tf_holstein.netcdf --data data/shallow [--split test] --out test.nc
    python -m tf_holstein.netcdf --predictions predictions.npz --data data/shallow \
        [--split test] --out predictions.nc

Any netCDF or HDF5 tool reads the result; with the `io` extra (`pip install -e ".[io]"`:
xarray and h5netcdf) `xarray.open_dataset(FILE)` opens it without TensorFlow. Writing reads
the TFRecords (`records.load_split`: the whole split in memory) and needs TensorFlow. The
file appears atomically.

Schema (one file per split or predictions file):

    dimensions   trajectory (N), time (T + 1 saved states), mid_time (T), site (L), site_j (L)
    coordinates  trajectory  int64 (trajectory)   the trajectory's number within its split
                 time        float64 (time)       hbar/t since the trajectory's saved state 0
                 step        int64 (time)         saved step number 0..T
                 mid_time    float64 (mid_time)   hbar/t of the mid-interval states
                 site, site_j int64               0-based chain sites i and j
    variables    rho_real, rho_imag  float32 (trajectory, time, site, site_j)
                                     Re and Im of rho_ij = <c_j^dagger c_i> (netCDF has no
                                     complex type)
                 Q, P                float32 (trajectory, time, site)
                 Delta_rho, Delta_Q  float32 (trajectory, time)  CDW order parameters
                                     (1/L) sum_i s_i (Re rho_ii, Q_i), s_i = -1 on even sites
                 mid_rho_real, mid_rho_imag, mid_Q, mid_P  (trajectory, mid_time, ...)
                                     the states half-way through each save interval
                                     (datasets only; left out with --no_mid)
                 phase               int64 (trajectory)  extra RK4 steps before saved state 0
                 t0                  float64 (trajectory)  hbar/t from the quench to saved
                                     state 0: (pre_steps + phase) dt
    attributes   every field of the protocol (name, L, g_i, g_f, noise, dt, save_interval,
                 pre_steps, saved_steps, n_train, n_val, n_test, seed, shard_size), the
                 physical constants (hopping, K0, eta, kT, G1), time_step, dataset, split,
                 source ('truth' or 'prediction'), and meta_json: the dataset's whole meta.json.

Units: energies in units of the hopping t, time in units of hbar/t; rho, Q, P and the order
parameters are dimensionless in these units. A predictions `.npz` is the layout
`pipelines/batch_inference.py` writes: `index` [N] (trajectories of the split), `Delta_rho`,
`Delta_Q` [N, steps + 1] and optionally `rho` [N, steps + 1, L, L], `Q`, `P` [N, steps + 1, L],
step 0 being the initial state; its time axis has steps + 1 entries.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping, Sequence

import numpy as np
from absl import app, flags

from tf_holstein import files, physics, records

DIMENSIONS = {"rho": ("site", "site_j"), "Q": ("site",), "P": ("site",)}
LONG_NAMES = {"rho": "single-particle density matrix rho_ij = <c_j^dagger c_i>",
              "Q": "lattice displacement", "P": "lattice momentum (dQ/dt = K0 P)",
              "Delta_rho": "CDW order parameter of the density",
              "Delta_Q": "CDW order parameter of the displacement"}
ORDER_PARAMETERS = ("Delta_rho", "Delta_Q")


def _xarray() -> Any:
    try:
        import xarray
    except ImportError:
        raise ImportError("netCDF export needs xarray and h5netcdf: pip install -e \".[io]\"") \
            from None
    return xarray


def _variables(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple]:
    """xarray variables of states {'rho'|'Q'|'P', optionally 'mid_' first: [N, steps, ...]}
    and order parameters [N, steps]; rho split into real and imaginary parts."""
    out = {}
    for key, value in arrays.items():
        base = key.removeprefix("mid_")
        dims = ("trajectory", "mid_time" if key.startswith("mid_") else "time",
                *DIMENSIONS.get(base, ()))
        attrs = {"long_name": LONG_NAMES[base], "units": "1"}
        if base == "rho":
            out[f"{key}_real"] = (dims, np.real(value).astype(np.float32),
                                  {**attrs, "long_name": "real part of the " + attrs["long_name"]})
            out[f"{key}_imag"] = (dims, np.imag(value).astype(np.float32),
                                  {**attrs, "long_name": "imaginary part of the "
                                   + attrs["long_name"]})
        else:
            out[key] = (dims, np.asarray(value, np.float32), attrs)
    return out


def to_xarray(arrays: Mapping[str, np.ndarray], index: np.ndarray, meta: Mapping[str, Any],
              split: str, source: str) -> Any:
    """An xarray.Dataset of the module docstring's schema.

    arrays: any of `rho` complex [N, steps + 1, L, L], `Q`, `P` [N, steps + 1, L], their
    `mid_` states [N, steps, ...], and `Delta_rho`, `Delta_Q` [N, steps + 1] (computed from
    rho and Q if not given); index: int [N], the trajectories of the split.
    """
    xr = _xarray()
    config = meta["config"]
    arrays = dict(arrays)
    if "rho" in arrays and "Q" in arrays and not all(k in arrays for k in ORDER_PARAMETERS):
        arrays.update(zip(ORDER_PARAMETERS, (np.asarray(x) for x in physics.order_parameters(
            np.asarray(arrays["rho"], np.complex128), np.asarray(arrays["Q"], np.float64)))))
    steps = next(v.shape[1] for k, v in arrays.items() if not k.startswith("mid_"))
    L = meta["L"]
    time_step = meta["time_step"]
    phase = np.asarray(meta["splits"][split]["phases"], np.int64)[index]
    coords = {"trajectory": ("trajectory", np.asarray(index, np.int64),
                             {"long_name": "trajectory number within its split"}),
              "time": ("time", np.arange(steps) * time_step,
                       {"long_name": "time since saved state 0", "units": "hbar/t"}),
              "step": ("time", np.arange(steps), {"long_name": "saved step"}),
              "site": ("site", np.arange(L), {"long_name": "site i"}),
              "site_j": ("site_j", np.arange(L), {"long_name": "site j"})}
    if any(key.startswith("mid_") for key in arrays):
        half = config["save_interval"] // 2
        coords["mid_time"] = ("mid_time", (np.arange(steps - 1) + half / config["save_interval"])
                              * time_step, {"long_name": "time of the mid-interval states "
                                            "since saved state 0", "units": "hbar/t"})
    variables = {**_variables(arrays),
                 "phase": ("trajectory", phase, {"long_name": "extra RK4 steps before "
                                                 "saved state 0"}),
                 "t0": ("trajectory", (config["pre_steps"] + phase) * config["dt"],
                        {"long_name": "time from the quench to saved state 0",
                         "units": "hbar/t"})}
    attrs = {**config, **meta["physics"],
             "time_step": time_step, "dataset": meta["dataset"], "split": split,
             "source": source, "meta_json": json.dumps(meta, sort_keys=True),
             "conventions": "energies in units of the hopping t, time in units of hbar/t; "
                            "rho_ij = <c_j^dagger c_i>; s_i = -1 on even 0-based sites, +1 "
                            "on odd ones"}
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def split_to_xarray(dataset_dir: str | os.PathLike, split: str = "test", mid: bool = True
                    ) -> Any:
    """A dataset's split (`records.load_split`) as an xarray.Dataset, mid states if `mid`."""
    data = records.load_split(dataset_dir, split)
    keys = [key for key in records.ARRAY_DTYPES if mid or not key.startswith("mid_")]
    return to_xarray({key: data[key] for key in keys}, data["index"], data["meta"], split,
                     "truth")


def read_predictions(path: str | os.PathLike, meta: Mapping[str, Any], split: str
                     ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The arrays and index of a predictions `.npz` (module docstring), checked against the
    dataset's meta.json: ValueError naming a missing array, a wrong shape, L or length, or an
    index outside the split."""
    with np.load(path) as npz:
        missing = [key for key in ("index", *ORDER_PARAMETERS) if key not in npz]
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)}: expected the .npz of "
                             f"pipelines/batch_inference.py (index, Delta_rho, Delta_Q, "
                             f"optionally rho, Q, P)")
        arrays = {key: npz[key] for key in (*ORDER_PARAMETERS, *records.STATE_KEYS)
                  if key in npz}
        index = np.asarray(npz["index"])
    n, available, L = len(index), meta["splits"][split]["num_trajectories"], meta["L"]
    if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer) or len(set(index)) < n:
        raise ValueError(f"{path}: index must be distinct integers [N], got {index.dtype} "
                         f"{index.shape}")
    if n and (index.min() < 0 or index.max() >= available):
        raise ValueError(f"{path}: index runs {index.min()}..{index.max()}, but the {split} "
                         f"split has trajectories 0..{available - 1}: wrong --split or --data?")
    steps = arrays["Delta_rho"].shape[1] if arrays["Delta_rho"].ndim == 2 else -1
    if not 2 <= steps <= meta["T"] + 1:
        raise ValueError(f"{path}: Delta_rho has shape {arrays['Delta_rho'].shape}; expected "
                         f"[N, steps + 1] with 1 <= steps <= {meta['T']} (the dataset's T)")
    for key, value in arrays.items():
        expected = (n, steps, *([L] * len(DIMENSIONS.get(key, ()))))
        if value.shape != expected:
            raise ValueError(f"{path}: {key} has shape {value.shape}, expected {expected} "
                             f"(N = {n} trajectories, {steps} time points, L = {L} of the "
                             f"dataset)")
    return arrays, index


def predictions_from_netcdf(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a predictions netCDF file (the schema above, source 'prediction') in the
    layout of a predictions `.npz`: `index` (the trajectory coordinate), `Delta_rho`,
    `Delta_Q` and, where stored, `rho` (from rho_real and rho_imag), `Q`, `P`. netCDF-4 is
    HDF5, so h5py (which TensorFlow installs) reads it without the io extra."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            names = [name for name in ("trajectory", *ORDER_PARAMETERS, "Q", "P", "rho_real",
                                       "rho_imag") if name in f]
            arrays = {name: f[name][...] for name in names}
    except OSError as e:
        raise ValueError(f"{path} is not a readable netCDF-4 (HDF5) file: {e}") from None
    if "trajectory" not in arrays:
        raise ValueError(f"{path} has no trajectory coordinate: expected a predictions file "
                         f"written by python -m tf_holstein.netcdf --predictions")
    arrays["index"] = arrays.pop("trajectory")
    if "rho_real" in arrays and "rho_imag" in arrays:
        arrays["rho"] = arrays.pop("rho_real") + 1j * arrays.pop("rho_imag")
    return arrays


def predictions_to_xarray(path: str | os.PathLike, dataset_dir: str | os.PathLike,
                          split: str = "test") -> Any:
    """A predictions `.npz` of trajectories of `split` of `dataset_dir` as an xarray.Dataset."""
    meta = records.read_meta(dataset_dir)
    if split not in meta["splits"]:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(meta['splits'])}")
    arrays, index = read_predictions(path, meta, split)
    return to_xarray(arrays, index, meta, split, "prediction")


def write(dataset: Any, path: str | os.PathLike) -> None:
    """Writes an xarray.Dataset as netCDF-4 (h5netcdf) atomically: temporary, then rename.

    The file is built in memory first (xarray >= 2025.8 returns it as a memoryview).
    """
    files.atomic_write_bytes(path, dataset.to_netcdf(engine="h5netcdf"))


def export(data: str | os.PathLike, out: str | os.PathLike, *, split: str = "test",
           predictions: str | os.PathLike | None = None, mid: bool = True) -> Any:
    """Writes a split (or, given `predictions`, that predictions file) of the dataset at `data`
    to the netCDF file `out` atomically; returns the xarray Dataset. ValueError on bad input."""
    if predictions:
        dataset = predictions_to_xarray(predictions, data, split)
    else:
        dataset = split_to_xarray(data, split, mid=mid)
    write(dataset, out)
    return dataset


def main(argv: Sequence[str]) -> None:
    """Command line: `export` with the flags, one line on stderr and exit 1 on bad input."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    try:
        dataset = export(FLAGS.data, FLAGS.out, split=FLAGS.split,
                         predictions=FLAGS.predictions, mid=not FLAGS.no_mid)
    except (ValueError, IOError, ImportError) as e:
        sys.exit(f"netcdf: error: {e}")
    print(f"{FLAGS.out}: {dict(dataset.sizes)}")


def _define_flags() -> None:
    """The command's flags, defined only when run as a command (no global flag clashes)."""
    flags.DEFINE_string("data", None, "dataset directory (holding meta.json)")
    flags.DEFINE_string("split", "test", "split to export (or predicted)")
    flags.DEFINE_string("predictions", None, "export this predictions .npz instead of the "
                        "split's trajectories")
    flags.DEFINE_string("out", None, "netCDF file to write (.nc)")
    flags.DEFINE_bool("no_mid", False, "leave the mid-interval states out (half the size)")
    flags.mark_flags_as_required(["data", "out"])


if __name__ == "__main__":
    _define_flags()
    app.run(main)
