"""Band-layout arrays of a dataset split: X, Y [N, T+1, L, W+1], Q, P [N, T+1, L] float32."""
import sys
import numpy as np
from tf_holstein import records, simulate
import tensorflow as tf

data, split, W, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
Xs, Ys, Qs, Ps = [], [], [], []
for shard in records.list_shards(data, split):
    for r in records.iterate_shard(shard, ["rho", "Q", "P"]):
        st = simulate.pack(r["rho"], r["Q"], r["P"], tf.float32, W)
        Xs.append(np.transpose(st.X.numpy(), (2, 0, 1)))
        Ys.append(np.transpose(st.Y.numpy(), (2, 0, 1)))
        Qs.append(r["Q"]); Ps.append(r["P"])
np.savez(out, X=np.stack(Xs), Y=np.stack(Ys), Q=np.stack(Qs), P=np.stack(Ps))
print(np.stack(Xs).shape)
