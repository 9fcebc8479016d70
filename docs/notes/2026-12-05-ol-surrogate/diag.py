import sys, json, os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np, tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1); tf.config.threading.set_inter_op_parallelism_threads(1)
from olmodel import *
name = sys.argv[1]; w = sys.argv[2] if len(sys.argv) > 2 else "last"
d = os.path.join(SCRATCH, name); cfg = json.load(open(d + "/config.json")); nrm = np.load(d + "/norm.npz")
va = np.load("ol_train_val.npz"); x = va["x"]
m = OLNet(cfg["H"], cfg["width"], cfg["layers"], cfg["kernel"], cfg["act"], cfg.get("project", 0))
m(tf.zeros([1, 32, NF + cfg["H"]])); m.load_weights(f"{d}/{w}.weights.h5")
r = make_rollout(m, nrm["mean"], nrm["std"], cfg["H"], g=1.0)
p = rollout_chunks(r, x[:, 0], 1000)
ma = nrm["maxabs"]
for s in (1, 5, 10, 25, 50, 100, 200, 500, 1000):
    q = np.nan_to_num(p[:, s - 1], nan=1e9)
    print(s, "maxabs/limit per ch", np.round(np.abs(q).reshape(-1, 5).max(0) / (10 * ma), 3),
          "rms err", np.round(np.sqrt(((q - x[:, s]) ** 2).reshape(-1, 5).mean(0)) / x.reshape(-1,5).std(0), 3))
dr, dq = [a.numpy() for a in order_params(tf.constant(np.nan_to_num(p[:, :200])))]
tr, tq = [a.numpy() for a in order_params(tf.constant(x[:, 1:201]))]
print("pred DQ traj0 every 5:", np.round(dq[0, ::5][:30], 3)); print("true DQ traj0 every 5:", np.round(tq[0, ::5][:30], 3))
print("pred std DQ", dq.std(), "true", tq.std())
