"""Named experiments. SPEC section 2 holds the paper's protocols."""
from __future__ import annotations

from dataclasses import replace

from .base import Config, DataConfig

SHALLOW = DataConfig(name="shallow", L=16, g_i=0.5, g_f=0.8, noise=1e-4, save_interval=64,
                     pre_steps=0, saved_steps=1200, n_train=64, n_val=4, n_test=64)
DEEP = DataConfig(name="deep", L=32, g_i=0.0, g_f=1.0, noise=1e-4, save_interval=256,
                  pre_steps=6400, saved_steps=1000, n_train=1228, n_val=32, n_test=256,
                  shard_size=16)

PRESETS: dict[str, Config] = {
    "shallow": Config("shallow", SHALLOW),
    "shallow_L32": Config("shallow_L32", replace(SHALLOW, L=32)),
    "deep": Config("deep", DEEP),
    "deep_L16": Config("deep_L16", replace(DEEP, L=16, n_train=128, n_val=8, n_test=64, shard_size=8)),
    # Seconds-sized protocols for tests.
    "smoke": Config("smoke", DataConfig(name="smoke", L=8, saved_steps=12, save_interval=8,
                                        n_train=4, n_val=2, n_test=2, shard_size=2)),
    "smoke_deep": Config("smoke_deep", DataConfig(name="smoke_deep", L=8, g_i=0.0, g_f=1.0,
                                                  save_interval=8, pre_steps=16, saved_steps=12,
                                                  n_train=4, n_val=2, n_test=2,
                                                  shard_size=2)),
}
