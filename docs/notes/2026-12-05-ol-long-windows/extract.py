"""Extract the O(L) state (Q, P, n, Re b, Im b) from a tf-holstein dataset split into .npz.

usage: python extract.py DATASET_DIR SPLIT OUT.npz
features [N, T+1, L, 5]: Q_i, P_i, n_i = Re rho_ii, Re rho_{i,i+1}, Im rho_{i,i+1} (periodic),
plus energy [N, T+1] from the full state (physics.energy) to check the O(L) energy formula.
"""
import sys

import numpy as np
import tensorflow as tf

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

from tf_holstein import physics, records  # noqa: E402


def features(rho, Q, P):
    n = np.real(np.diagonal(rho, axis1=-2, axis2=-1))
    L = Q.shape[-1]
    i = np.arange(L)
    b = rho[..., i, (i + 1) % L]
    return np.stack([Q, P, n, b.real, b.imag], axis=-1).astype(np.float32)


def main(dataset, split, out):
    meta = records.read_meta(dataset)
    g = meta["config"]["g_f"]
    shards = records.complete_shards(dataset, split, meta)
    feats, energies, index = [], [], []
    for path in shards:
        for t in records.iterate_shard(path, keys=("rho", "Q", "P")):
            feats.append(features(t["rho"], t["Q"], t["P"]))
            energies.append(physics.energy(tf.constant(t["rho"], tf.complex128) if False else
                                           tf.cast(t["rho"], tf.complex128),
                                           tf.cast(t["Q"], tf.float64),
                                           tf.cast(t["P"], tf.float64), g).numpy())
            index.append(int(t["index"]))
    order = np.argsort(index)
    x = np.stack(feats)[order]
    e = np.stack(energies)[order]
    np.savez(out, x=x, energy=e, index=np.array(index)[order], g=g,
             time_step=meta["time_step"] if "time_step" in meta else 2.56)
    print(out, x.shape, "energy range", e.min(), e.max())


if __name__ == "__main__":
    main(*sys.argv[1:4])
