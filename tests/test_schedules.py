"""The curriculum's learning-rate schedule at its landmarks."""
import math

import keras
import pytest

from tf_holstein.schedules import StagedWarmupCosine


@pytest.fixture
def schedule():
    return StagedWarmupCosine(lr=1e-3, stage_steps=[100, 50], warmup_steps=10, eta_min=0.1)


def lr(schedule, step):
    return float(schedule(step))


def test_warmup_starts_each_stage_and_reaches_lr(schedule):
    for start in (0, 100):
        assert lr(schedule, start) == pytest.approx(1e-4)  # (0 + 1) / 10 of lr
        assert lr(schedule, start + 4) == pytest.approx(5e-4)
        assert lr(schedule, start + 9) == pytest.approx(1e-3)  # end of warm-up
        assert lr(schedule, start + 10) == pytest.approx(1e-3)  # cosine starts at lr


def test_cosine_ends_each_stage_near_eta_min(schedule):
    # Stage 0: 90 cosine steps, the last at progress 89/90.
    expected = 1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert lr(schedule, 99) == pytest.approx(expected, rel=1e-6)
    assert lr(schedule, 99) < 1.01e-4
    assert lr(schedule, 55) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5), rel=1e-6)  # half-way
    assert lr(schedule, 149) == pytest.approx(
        1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 39 / 40))), rel=1e-6)
    assert lr(schedule, 10_000) == lr(schedule, 149)  # holds after the last stage


def test_stage_lookup(schedule):
    assert [schedule.stage_of(s) for s in (0, 99, 100, 149, 500)] == [0, 0, 1, 1, 1]


def test_serialisable(schedule):
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(
        schedule))
    assert [lr(restored, s) for s in range(0, 150, 7)] == [lr(schedule, s) for s in
                                                           range(0, 150, 7)]


def test_rejects_empty_stages():
    with pytest.raises(ValueError, match="at least one step"):
        StagedWarmupCosine(1e-3, [10, 0], 5, 0.0)
