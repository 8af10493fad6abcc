"""launcher/worker/integrations/hf.py's RNG state: every generator the Trainer draws from comes
back,
in plain values and tensors (a persisted copy loads with weights_only=True)."""

from __future__ import annotations

import io
import random

import numpy as np
import torch

from launcher.worker.integrations.hf import rng_state, set_rng_state


def draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_restored_rng_state_draws_the_same_numbers() -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    saved = rng_state()
    expected = draws()
    draws()  # moved on
    set_rng_state(saved)
    assert draws() == expected


def test_rng_state_loads_with_weights_only() -> None:
    buffer = io.BytesIO()
    torch.save(rng_state(), buffer)
    expected = draws()
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True))
    assert draws() == expected
