"""Exact resume without Ray: the TaskRunner's random state and the validation order travel with a checkpoint."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from tre.backend.resume import driver_rng_state, restore_after_next_iter


def _trainer(seed: int = 0) -> SimpleNamespace:
    """verl's two dataloaders as RayPPOTrainer builds them: training with a seeded sampler, validation shuffled."""
    torch.manual_seed(seed)
    train_sampler = torch.utils.data.RandomSampler(range(8), generator=torch.Generator().manual_seed(seed))
    return SimpleNamespace(train_dataloader=StatefulDataLoader(list(range(8)), batch_size=2, sampler=train_sampler, drop_last=True),
                           val_dataloader=StatefulDataLoader(list(range(6)), batch_size=6, shuffle=True))


def _after_step(trainer) -> tuple:
    """What a step after the checkpoint sees: a validation batch and the TaskRunner's generators."""
    val = next(iter(trainer.val_dataloader)).tolist()
    return val, torch.rand(2).tolist(), np.random.rand(), random.random()


def test_resumed_runner_draws_what_the_uninterrupted_one_draws():
    run = _trainer()
    batches = iter(run.train_dataloader)  # epoch start, before step 1
    next(batches)
    next(iter(run.val_dataloader))  # the validation before training and at step 1
    state, loader_state = driver_rng_state(run), run.train_dataloader.state_dict()  # the checkpoint at step 1
    expected = (next(batches).tolist(), *_after_step(run))

    resumed = _trainer()
    resumed.train_dataloader.load_state_dict(loader_state)
    restore_after_next_iter(resumed, state)
    got = next(iter(resumed.train_dataloader)).tolist()  # making this iterator draws from torch's global generator
    assert (got, *_after_step(resumed)) == expected
    assert type(resumed.train_dataloader) is StatefulDataLoader  # restored once, then the loader is itself again
