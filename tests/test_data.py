"""Streaming windows: exact slices, derivative labels, epochs, seeds, noise, corrupt shards."""
import itertools

import numpy as np
import pytest
import tensorflow as tf

from tf_holstein import data, datagen, files, physics, records
from tf_holstein.configs import get_config

L = 8
T = 12
G_F = 0.8
TRAJECTORIES_PER_SHARD = (3, 3, 2)  # 8 trajectories in 3 shards
ID_SCALE = 1000.0  # Q[t, 0] = index * ID_SCALE + t identifies every state


def fake_trajectory(rng, index):
    """Random arrays of the stored shapes; Q[:, 0] encodes (index, step)."""
    def c(*shape):
        return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)

    def r(*shape):
        return rng.normal(size=shape).astype(np.float32)

    trajectory = {"rho": c(T + 1, L, L), "Q": r(T + 1, L), "P": r(T + 1, L),
                  "mid_rho": c(T, L, L), "mid_Q": r(T, L), "mid_P": r(T, L)}
    trajectory["Q"][:, 0] = index * ID_SCALE + np.arange(T + 1)
    return trajectory


def write_dataset(directory, shard_sizes=TRAJECTORIES_PER_SHARD, seed=0):
    """A dataset directory as datagen leaves it (train split only), with random arrays."""
    rng = np.random.default_rng(seed)
    index = 0
    for shard, size in enumerate(shard_sizes):
        examples = []
        for _ in range(size):
            examples.append(records.encode_trajectory(fake_trajectory(rng, index), index, 0))
            index += 1
        records.write_shard(directory / records.shard_name("train", shard, len(shard_sizes)),
                            examples)
    files.write_json(directory / records.META_FILE, {
        "schema_version": records.SCHEMA_VERSION, "L": L, "T": T,
        "config": {"L": L, "saved_steps": T, "g_f": G_F},
        "splits": {"train": {"num_trajectories": index, "num_shards": len(shard_sizes)}}})
    return directory


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def stored(dataset_dir):
    return records.load_split(dataset_dir, "train")


def window_ids(dataset):
    """(trajectory index, start step) of every window, in order."""
    ids = []
    for inputs, _ in dataset:
        q0 = inputs["Q"][:, 0].numpy().astype(np.int64)
        ids += [(int(q // ID_SCALE), int(q % ID_SCALE)) for q in q0]
    return ids


def all_windows(n_step):
    return [(i, k) for i in range(sum(TRAJECTORIES_PER_SHARD)) for k in range(T - n_step + 1)]


@pytest.mark.parametrize("n_step", [1, 4])
def test_windows_equal_stored_slices(dataset_dir, stored, n_step):
    dataset = data.make_dataset(dataset_dir, "train", n_step=n_step, batch_size=5, seed=3)
    seen = 0
    for inputs, targets in dataset:
        assert inputs["rho"].dtype == tf.complex64 and inputs["Q"].dtype == tf.float32
        assert set(targets) == {"rho", "Q", "P"}
        for b, q in enumerate(inputs["Q"][:, 0].numpy().astype(np.int64)):
            i, k = int(q // ID_SCALE), int(q % ID_SCALE)
            for key in records.STATE_KEYS:
                np.testing.assert_array_equal(inputs[key][b].numpy(), stored[key][i, k])
                np.testing.assert_array_equal(targets[key][b].numpy(),
                                              stored[key][i, k + 1:k + n_step + 1])
            seen += 1
    assert seen == data.count_windows(dataset_dir, "train", n_step) == len(all_windows(n_step))


def test_derivative_labels_are_the_rhs_at_the_mid_states(dataset_dir, stored):
    n_step = 3
    dataset = data.make_dataset(dataset_dir, "train", n_step=n_step, batch_size=4,
                                derivatives=True, seed=1)
    checked = 0
    for inputs, targets in dataset.take(6):
        for b, q in enumerate(inputs["Q"][:, 0].numpy().astype(np.int64)):
            i, k = int(q // ID_SCALE), int(q % ID_SCALE)
            mids = slice(k, k + n_step)  # target j (state k+j+1) <- mid state k+j
            exact = physics.rhs(tf.constant(stored["mid_rho"][i, mids], tf.complex128),
                                tf.constant(stored["mid_Q"][i, mids], tf.float64),
                                tf.constant(stored["mid_P"][i, mids], tf.float64), G_F)
            for key, want in zip(("drho", "dQ", "dP"), exact):
                got = targets[key][b].numpy()
                assert got.shape == want.shape
                scale = np.max(np.abs(want.numpy()))
                np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=2e-6 * scale)
            checked += 1
    assert checked == 24


@pytest.mark.parametrize("n_step", [1, 5])
def test_unshuffled_epoch_enumerates_each_window_once_in_order(dataset_dir, n_step):
    dataset = data.make_dataset(dataset_dir, "train", n_step=n_step, batch_size=7,
                                shuffle=False)
    assert window_ids(dataset) == all_windows(n_step)


def test_shuffled_epoch_still_holds_each_window_once(dataset_dir):
    dataset = data.make_dataset(dataset_dir, "train", n_step=2, batch_size=8, seed=0)
    ids = window_ids(dataset)
    assert sorted(ids) == all_windows(2)
    assert ids != all_windows(2)
    # Windows of different trajectories are mixed within a batch.
    first = {i for i, _ in ids[:8]}
    assert len(first) > 1


def test_same_seed_same_order_and_noise_other_seed_other_order(dataset_dir):
    def run(seed):
        dataset = data.make_dataset(dataset_dir, "train", n_step=2, batch_size=8, seed=seed,
                                    repeat=True, noise_std=0.01, shuffle_buffer=64).take(20)
        batches = [inputs for inputs, _ in dataset]
        ids = [int(np.round(q)) for inputs in batches for q in inputs["Q"][:, 0].numpy()]
        return ids, np.stack([inputs["rho"].numpy() for inputs in batches])

    ids, rho = run(7)
    same_ids, same_rho = run(7)
    other_ids, other_rho = run(8)
    assert same_ids == ids and other_ids != ids
    np.testing.assert_array_equal(same_rho, rho)  # the noise too
    assert not np.array_equal(other_rho, rho)


def test_each_epoch_holds_every_window_in_a_new_order(dataset_dir):
    dataset = data.make_dataset(dataset_dir, "train", n_step=2, batch_size=8, seed=5)
    first, second = window_ids(dataset), window_ids(dataset)
    assert sorted(first) == sorted(second) == all_windows(2)
    assert first != second
    repeated = data.make_dataset(dataset_dir, "train", n_step=2, batch_size=8, seed=5,
                                 repeat=True, drop_remainder=True, shuffle_buffer=16)
    ids = window_ids(repeated.take(10 * len(all_windows(2)) // 8))  # 10 epochs
    counts = {window: ids.count(window) for window in all_windows(2)}
    assert len(ids) == sum(counts.values())
    assert 8 <= min(counts.values()) and max(counts.values()) <= 12


def test_noise_has_the_requested_std_on_inputs_only(dataset_dir, stored):
    sigma, n_step = 0.05, 2
    dataset = data.make_dataset(dataset_dir, "train", n_step=n_step, batch_size=32,
                                noise_std=sigma, seed=11, repeat=True, drop_remainder=True)
    noise = {"rho": [], "Q": [], "P": []}
    for inputs, targets in dataset.take(100):  # 3200 windows: 204,800 rho, 22,400 Q entries
        q0 = np.round(inputs["Q"][:, 0].numpy()).astype(np.int64)
        i, k = q0 // int(ID_SCALE), q0 % int(ID_SCALE)
        for key in records.STATE_KEYS:
            noise[key].append(inputs[key].numpy() - stored[key][i, k])
            steps = k[:, None] + np.arange(1, n_step + 1)
            np.testing.assert_array_equal(targets[key].numpy(), stored[key][i[:, None], steps])
    rho = np.concatenate([n.ravel() for n in noise["rho"]])
    assert np.std(rho.real) == pytest.approx(sigma / np.sqrt(2), rel=0.02)
    assert np.std(rho.imag) == pytest.approx(sigma / np.sqrt(2), rel=0.02)
    assert np.mean(np.abs(rho) ** 2) == pytest.approx(sigma ** 2, rel=0.02)
    for key in ("Q", "P"):
        # Q[:, 0] is ~1e4 in float32, so its noise is rounded: use the other sites
        values = np.concatenate([n[:, 1:] for n in noise[key]])
        assert np.std(values) == pytest.approx(sigma, rel=0.02)
        assert abs(np.mean(values)) < 3 * sigma / np.sqrt(values.size)


def test_drop_remainder_gives_a_static_batch(dataset_dir):
    dataset = data.make_dataset(dataset_dir, "train", n_step=4, batch_size=6, derivatives=True,
                                drop_remainder=True)
    inputs, targets = dataset.element_spec
    assert inputs["rho"].shape == (6, L, L) and inputs["Q"].shape == (6, L)
    assert targets["rho"].shape == (6, 4, L, L) and targets["dP"].shape == (6, 4, L)
    assert len(window_ids(dataset)) == len(all_windows(4)) // 6 * 6


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_shard_raises_an_error_naming_the_file(tmp_path, damage):
    directory = write_dataset(tmp_path)
    shard = records.list_shards(directory, "train")[1]
    content = bytearray(shard.read_bytes())
    if damage == "truncate":
        content = content[:len(content) - 100]
    else:
        content[len(content) // 2] ^= 0xFF
    shard.write_bytes(bytes(content))
    # A cut record is found from the length headers before reading (IOError), flipped bytes
    # by their checksum while reading: either way the error names the shard.
    for shuffle in (False, True):
        with pytest.raises((IOError, tf.errors.InvalidArgumentError), match=shard.name):
            for _ in data.make_dataset(directory, "train", n_step=1, batch_size=4,
                                       shuffle=shuffle):
                pass


def test_wrong_shape_names_the_file(tmp_path):
    directory = write_dataset(tmp_path)
    meta = records.read_meta(directory)
    files.write_json(directory / records.META_FILE, {**meta, "L": L + 2})
    dataset = data.make_dataset(directory, "train", n_step=1, batch_size=4, shuffle=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="train-00000-of-00003"):
        next(iter(dataset))


def test_incomplete_dataset_is_refused(tmp_path):
    directory = write_dataset(tmp_path)
    records.list_shards(directory, "train")[2].unlink()
    with pytest.raises(IOError, match="incomplete"):
        data.make_dataset(directory, "train", n_step=1, batch_size=4)


def test_own_files_run_the_same_pipeline(dataset_dir):
    pattern = str(dataset_dir / "train-*.tfrecord")
    own = data.make_dataset_from_files(pattern, n_step=3, batch_size=5, shuffle=False,
                                       derivatives=True, g_f=G_F)
    ours = data.make_dataset(dataset_dir, "train", n_step=3, batch_size=5, shuffle=False,
                             derivatives=True)
    assert own.element_spec == ours.element_spec  # L was read from the first trajectory
    for (a_in, a_out), (b_in, b_out) in itertools.zip_longest(own, ours):
        for key in a_in:
            np.testing.assert_array_equal(a_in[key].numpy(), b_in[key].numpy())
        for key in a_out:
            np.testing.assert_array_equal(a_out[key].numpy(), b_out[key].numpy())
    with pytest.raises(ValueError, match="g_f"):
        data.make_dataset_from_files(pattern, n_step=1, batch_size=2, derivatives=True)
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        data.make_dataset_from_files(str(dataset_dir / "nothing-here*"), n_step=1, batch_size=2)


def test_unreadable_own_file_is_named(tmp_path):
    junk = tmp_path / "junk.tfrecord"
    junk.write_bytes(b"not a TFRecord file at all")
    with pytest.raises(IOError, match="junk.tfrecord"):
        data.make_dataset_from_files(str(junk), n_step=1, batch_size=2)


@pytest.mark.parametrize("shard_sizes", [TRAJECTORIES_PER_SHARD, (8,)])
def test_input_pipelines_partition_the_windows(tmp_path, shard_sizes):
    directory = write_dataset(tmp_path, shard_sizes)
    parts = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline,
                                             num_replicas_in_sync=2)
        dataset = data.make_dataset(directory, "train", n_step=2, batch_size=8, seed=4,
                                    input_context=context)
        assert dataset.element_spec[0]["Q"].shape.as_list() == [None, L]
        parts.append(window_ids(dataset))
        assert parts[-1]  # every pipeline gets windows
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == all_windows(2)


def test_per_replica_batch_size(dataset_dir):
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                         num_replicas_in_sync=2)
    dataset = data.make_dataset(dataset_dir, "train", n_step=1, batch_size=8,
                                drop_remainder=True, input_context=context)
    assert dataset.element_spec[0]["rho"].shape == (4, L, L)


def test_derivative_labels_match_simulated_dynamics(tmp_path):
    """On simulator data, target j's derivative label is the midpoint slope between
    states k+j and k+j+1: (u_{k+j+1} - u_{k+j}) / time_step within the midpoint rule's
    O(time_step^2) error, far below the O(time_step) error of a shifted label."""
    directory = datagen.generate(get_config("smoke").data, tmp_path, progress=False)
    time_step = records.read_meta(directory)["time_step"]
    dataset = data.make_dataset(directory, "train", n_step=3, batch_size=64, derivatives=True,
                                shuffle=False)
    for inputs, targets in dataset:
        for name in records.STATE_KEYS:
            states = tf.concat([inputs[name][:, None], targets[name]], axis=1).numpy()
            slopes = (states[:, 1:] - states[:, :-1]) / time_step
            labels = targets[f"d{name}"].numpy()
            error = np.max(np.abs(slopes - labels)) / np.max(np.abs(labels))
            shifted = np.max(np.abs(slopes[:, 1:] - labels[:, :-1])) / np.max(np.abs(labels))
            assert error < 1e-2, (name, error)
            assert shifted > 10 * error, (name, shifted, error)
