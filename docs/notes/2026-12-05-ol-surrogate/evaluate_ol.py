"""Score an O(L) run on data/deep_fresh (256 trajectories x 1000 steps) and time it beside
rk4:0.64:float32 (batch 128, 100 steps, median of 3 after a warm-up, one thread).

usage: python evaluate_ol.py RUN_NAME [--no_rk4] [--threads N]
"""
import json
import os
import statistics
import sys
import time

import numpy as np
import tensorflow as tf

THREADS = int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv else 1
tf.config.threading.set_intra_op_parallelism_threads(THREADS)
tf.config.threading.set_inter_op_parallelism_threads(1 if THREADS == 1 else 2)

sys.path.insert(0, os.path.dirname(__file__))
from olmodel import (NF, limits, MAX_LAG, OLNet, energy_raw, make_rollout, order_params,  # noqa
                     rollout_chunks)
from tf_holstein import baselines, climate, cost, metrics, records  # noqa: E402

SCRATCH = os.environ.get("OL_SCRATCH", "scratch_ol")  # features, runs and logs
FRESH = "data/deep_fresh"  # run from the repository root


def main():
    name = sys.argv[1]
    d = os.path.join(SCRATCH, name)
    cfg = json.load(open(os.path.join(d, "config.json")))
    nrm = np.load(os.path.join(d, "norm.npz"))
    te = np.load(os.environ.get("OL_TEST", os.path.join(SCRATCH, "ol_test.npz")))
    x, e_true = te["x"], te["energy"]
    g = float(te["g"])
    L = x.shape[2]
    model = OLNet(cfg["H"], cfg["width"], cfg["layers"], cfg["kernel"], cfg["act"],
                  cfg.get("project", 0))
    model(tf.zeros([1, L, NF + cfg["H"]]))
    wname = sys.argv[2] if len(sys.argv) > 2 and not sys.argv[2].startswith("--") else "best"
    model.load_weights(os.path.join(d, f"{wname}.weights.h5"))
    suffix = "" if wname == "best" else "_" + wname
    name = name + suffix
    rollout = make_rollout(model, nrm["mean"], nrm["std"], cfg["H"], jit=bool(cfg["jit"]), g=g,
                           lim=limits(nrm["maxabs"]) if cfg.get("clamp") else None)
    pred = rollout_chunks(rollout, x[:, 0], 1000)
    truth = x[:, 1:1001]
    maxabs = nrm["maxabs"]
    bad = ~np.isfinite(pred).all(axis=(1, 2, 3))
    bad |= (np.abs(np.nan_to_num(pred, nan=1e9)) > 10 * maxabs).any(axis=(1, 2, 3))
    kept = ~bad
    res = {"run": name, "flops_per_step": cfg["flops_per_step"], "params": cfg["params"],
           "n_diverged": int(bad.sum()), "n": len(x)}
    t_op = [a.numpy() for a in order_params(tf.constant(truth))]
    curves = {}
    if kept.any():
        p_op = [a.numpy() for a in order_params(tf.constant(pred[kept]))]
        for nm, t, p in zip(("Delta_rho", "Delta_Q"), t_op, p_op):
            ent = metrics.autocorrelation_entry(t.astype(np.float64), p.astype(np.float64),
                                                MAX_LAG)
            res[nm] = {"max_abs_diff": ent["max_abs_diff"],
                       "sampling_floor": ent["sampling_floor"],
                       "argmax_tau": int(np.argmax(np.abs(ent["prediction"] - ent["truth"]))),
                       "W1": climate.wasserstein_1(t, p),
                       "W1_floor": climate.bootstrap_floor(t.astype(np.float64),
                                                           climate.wasserstein_1),
                       "std_truth": float(t.std()), "std_pred": float(p.std()),
                       "mean_truth": float(t.mean()), "mean_pred": float(p.mean())}
            curves[nm] = {"truth": ent["truth"].tolist(), "prediction": ent["prediction"].tolist()}
        e_pred = energy_raw(tf.constant(pred[kept][:, -1].astype(np.float64)), g).numpy()
        drift = e_pred - e_true[kept, 0]
        res["energy_drift_step1000"] = {"median_abs": float(np.median(np.abs(drift))),
                                        "median_signed": float(np.median(drift)),
                                        "median_abs_per_site": float(np.median(np.abs(drift))) / L,
                                        "truth_median_abs": float(np.median(np.abs(
                                            e_true[:, 1000] - e_true[:, 0])))}
        # energy drift along the rollout (median |dE| at a few steps)
        e_all = energy_raw(tf.constant(pred[kept].astype(np.float64)), g).numpy()
        res["energy_drift_median_abs_at"] = {
            str(s): float(np.median(np.abs(e_all[:, s - 1] - e_true[kept, 0])))
            for s in (1, 10, 100, 500, 1000)}
    if cfg.get("clamp"):
        lim = limits(maxabs).numpy()
        centre = np.array([0, 0, 0.5, 0, 0], np.float32)
        at = np.abs(pred - centre) >= lim * (1 - 1e-4)
        res["fraction_at_clamp_per_channel"] = at.reshape(-1, NF).mean(0).tolist()
    json.dump(curves, open(os.path.join(d, f"test_curves{suffix}.json"), "w"))

    # ---- timing: model and RK4 side by side
    x0 = tf.constant(np.resize(x[:, 0], (128, L, NF)))
    steps = tf.constant(100)
    rollout(x0, steps).numpy()
    secs = []
    for _ in range(3):
        tic = time.perf_counter()
        rollout(x0, steps).numpy()
        secs.append(time.perf_counter() - tic)
    us = [1e6 * s / (128 * 100) for s in secs]
    res["cost_us"] = {"median": statistics.median(us), "range": [min(us), max(us)],
                      "threads": THREADS, "jit": cfg["jit"]}
    if "--no_rk4" not in sys.argv:
        meta = records.read_meta(FRESH)
        shard = records.complete_shards(FRESH, "test", meta)[0]
        ini = [t for t, _ in zip(records.iterate_shard(shard, keys=("rho", "Q", "P")), range(8))]
        initial = {k: np.stack([t[k][0] for t in ini]) for k in ("rho", "Q", "P")}
        rk = cost.measure(baselines.baseline_model("rk4:0.64:float32", meta), initial)
        res["rk4_cost_us"] = {"median": rk["us_per_trajectory_step"],
                              "range": rk["us_per_trajectory_step_range"]}
    res["loadavg"] = os.getloadavg()
    res["time"] = time.strftime("%H:%M:%S", time.gmtime())
    print("RESULT", json.dumps(res), flush=True)
    json.dump(res, open(os.path.join(d, f"test_result{suffix}.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
