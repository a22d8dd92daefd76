"""`data_fraction` as in the original workflow: each epoch takes the next slice of one seeded
stream of permutations, so every training image is seen once per 1/fraction epochs."""

from __future__ import annotations

from collections import Counter

import numpy as np

from worker.training.data import epoch_order

TRAIN_IDX = np.arange(3, 63, 2)  # 30 training images, indices into the train split (not 0..n-1)


def test_at_half_two_consecutive_epochs_cover_every_image_exactly_once():
    for first in (0, 2, 6):  # every pair of epochs that makes a pass
        one, two = epoch_order(TRAIN_IDX, 7, first, 0.5), epoch_order(TRAIN_IDX, 7, first + 1, 0.5)
        assert len(one) == len(two) == 15
        assert sorted(np.concatenate([one, two]).tolist()) == TRAIN_IDX.tolist()
    assert epoch_order(TRAIN_IDX, 7, 0, 0.5).tolist() != epoch_order(TRAIN_IDX, 7, 2, 0.5).tolist()  # a new pass, reshuffled


def test_a_fraction_that_does_not_divide_a_pass_goes_on_where_the_last_epoch_stopped():
    epochs = [epoch_order(TRAIN_IDX, 1, e, 0.3) for e in range(10)]  # 9 images an epoch, 3 passes
    assert {len(e) for e in epochs} == {9}
    seen = Counter(np.concatenate(epochs).tolist())
    assert set(seen) == set(TRAIN_IDX.tolist()) and set(seen.values()) == {3}
    first_pass = np.concatenate(epochs)[:30]
    assert sorted(first_pass.tolist()) == TRAIN_IDX.tolist()  # every image once before any twice


def test_resumption_gives_the_same_orders():
    """A resumed job asks for epoch e alone, on another host: the same slice as in a run that never stopped."""
    uninterrupted = [epoch_order(TRAIN_IDX, 5, e, 0.4) for e in range(6)]
    for epoch in (5, 3, 0):
        np.testing.assert_array_equal(epoch_order(TRAIN_IDX.copy(), 5, epoch, 0.4), uninterrupted[epoch])
    assert epoch_order(TRAIN_IDX, 6, 3, 0.4).tolist() != uninterrupted[3].tolist()  # the seed matters


def test_the_full_data_is_one_fresh_permutation_per_epoch():
    orders = [epoch_order(TRAIN_IDX, 2, e) for e in range(3)]
    assert all(sorted(o.tolist()) == TRAIN_IDX.tolist() for o in orders)
    assert orders[0].tolist() != orders[1].tolist()
    assert len(epoch_order(TRAIN_IDX, 2, 0, 0.01)) == 1  # at least one image
