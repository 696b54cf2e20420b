"""RNG-state helpers shared by the encoder and KV-cache lifecycle tests."""

from __future__ import annotations

import random

import numpy as np
import torch


def current_states() -> tuple:
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def fresh_states(seed: int) -> tuple:
    """The states of a process freshly seeded with `seed` (python, numpy, torch)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return current_states()


def assert_states_equal(expected: tuple, actual: tuple) -> None:
    assert expected[0] == actual[0], "python random state differs"
    for a, b in zip(expected[1], actual[1]):
        assert np.array_equal(np.asarray(a), np.asarray(b)), "numpy state differs"
    assert torch.equal(expected[2], actual[2]), "torch state differs"
