import numpy as np
import pytest

from reallm_cli.train.batching import BatchingError, DurationBatchSampler, padded_seconds, padding_ratio


@pytest.fixture(scope="module")
def durations():
    rng = np.random.default_rng(0)
    return np.clip(rng.lognormal(mean=1.8, sigma=0.6, size=600), 0.5, 30.0).tolist()


def test_every_item_once_and_batches_respect_the_cap(durations):
    s = DurationBatchSampler(durations, max_batch_s=60.0, seed=1)
    batches = s.all_batches(0)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(durations)))
    assert all(padded_seconds(b, durations) <= 60.0 for b in batches)
    capped = DurationBatchSampler(durations, max_batch_s=60.0, max_batch_size=4)
    assert max(len(b) for b in capped.all_batches(0)) == 4


def test_padding_is_low_compared_with_random_batches(durations):
    bucketed = DurationBatchSampler(durations, max_batch_s=60.0, n_buckets=10, seed=3)
    random = DurationBatchSampler(durations, max_batch_s=60.0, n_buckets=1, seed=3)  # one bucket = random
    r_bucketed = padding_ratio(bucketed.all_batches(0), durations)
    r_random = padding_ratio(random.all_batches(0), durations)
    assert r_bucketed < 0.15
    assert r_bucketed < r_random / 2, (r_bucketed, r_random)
    # fewer padded seconds also means fewer steps per epoch
    assert len(bucketed.all_batches(0)) < len(random.all_batches(0))


def test_deterministic_per_seed_and_epoch(durations):
    a = DurationBatchSampler(durations, 60.0, seed=5)
    b = DurationBatchSampler(durations, 60.0, seed=5)
    assert a.all_batches(2) == b.all_batches(2)
    assert a.all_batches(2) != a.all_batches(3)
    assert a.all_batches(2) != DurationBatchSampler(durations, 60.0, seed=6).all_batches(2)


def test_resume_from_epoch_and_batch_index(durations):
    s = DurationBatchSampler(durations, 60.0, seed=7)
    s.set_epoch(4)
    full = list(s)
    resumed = DurationBatchSampler(durations, 60.0, seed=7)  # a fresh process after a restart
    resumed.set_epoch(4, start_batch=9)
    assert len(resumed) == len(full) - 9
    assert list(resumed) == full[9:]


def test_shards_are_disjoint_equal_and_cover_the_epoch(durations):
    world = 3
    shards = [DurationBatchSampler(durations, 60.0, seed=2, rank=r, world_size=world).batches(1) for r in range(world)]
    assert len({len(x) for x in shards}) == 1  # every rank runs the same number of steps
    all_b = DurationBatchSampler(durations, 60.0, seed=2).all_batches(1)
    taken = [b for x in shards for b in x]
    assert len(taken) == len(all_b) - len(all_b) % world
    assert sorted(map(tuple, taken)) == sorted(map(tuple, all_b[: len(taken)]))
    seen = [i for b in taken for i in b]
    assert len(seen) == len(set(seen))


def test_bad_settings_are_refused():
    with pytest.raises(BatchingError):
        DurationBatchSampler([1.0, 2.0], max_batch_s=0)
    with pytest.raises(BatchingError):
        DurationBatchSampler([1.0, -2.0], max_batch_s=10)
    with pytest.raises(BatchingError):
        DurationBatchSampler([1.0], max_batch_s=10, rank=2, world_size=2)
    # an item longer than the cap still gets trained on, alone
    assert DurationBatchSampler([50.0, 1.0], max_batch_s=10, shuffle=False).all_batches(0) == [[1], [0]]
