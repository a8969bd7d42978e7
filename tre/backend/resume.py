"""Exact resume: a run restarted from a checkpoint continues with the numbers the uninterrupted run would have had.

verl 0.4.1 (verl/trainer/ppo/ray_trainer.py, RayPPOTrainer.fit) restores the workers' weights, optimizers and random
state and the training dataloader, but on its own a resumed run drifts from the uninterrupted one:
  1. fit() repeats the before-training validation right after `_load_checkpoint`. Validation samples (val_kwargs
     do_sample=True), so it draws from the actor's just-restored random state and every later rollout differs.
     Skipped on resume: that validation already ran and was logged in the first leg (metrics.jsonl keeps it).
  2. The validation dataloader shuffles with its own generator, which `_save_checkpoint` does not save, so the
     resumed run's validations would see the test set in another order (another draw per prompt). Saved with the
     checkpoint (together with the TaskRunner's torch, NumPy and Python generators) and restored on resume.
  3. Resuming from the final checkpoint would train step N+1 (fit() always trains once more after loading).
     Nothing is trained then; the run's metrics are already complete.
install_resume_hook() wraps `_save_checkpoint` and `_load_checkpoint` in the TaskRunner (Ray's setup hook) and copies
no verl code. The TaskRunner's generators are set back when the training dataloader has made its iterator after the
restore: making one draws a number from the global torch generator, which the uninterrupted run drew before step 1.
"""

from __future__ import annotations

import os
import random
from typing import Any

DRIVER_STATE = "tre_driver_rng.pt"  # inside verl's global_step_<N>/ folder, written before verl's step marker


def driver_rng_state(trainer) -> dict[str, Any]:
    """The TaskRunner's random state: torch, NumPy, Python, and the validation sampler's own generator."""
    import numpy as np
    import torch

    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}
    generator = getattr(getattr(trainer, "val_dataloader", None), "sampler", None)
    generator = getattr(generator, "generator", None)
    if generator is not None:
        state["val_sampler"] = generator.get_state()
    return state


def restore_driver_rng_state(trainer, state: dict[str, Any]) -> None:
    """Set the TaskRunner's random state saved by driver_rng_state."""
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    generator = getattr(getattr(trainer.val_dataloader, "sampler", None), "generator", None)
    if generator is not None and "val_sampler" in state:
        generator.set_state(state["val_sampler"])


def restore_after_next_iter(trainer, state: dict[str, Any]) -> None:
    """restore_driver_rng_state once the training dataloader's next iterator exists (fit() makes it after loading)."""
    loader = trainer.train_dataloader
    base = type(loader)

    class RestoringLoader(base):  # one-shot: the instance gets its own class back on first use
        def __iter__(self):
            iterator = base.__iter__(self)
            self.__class__ = base
            restore_driver_rng_state(trainer, state)
            return iterator

    loader.__class__ = RestoringLoader


def _step_folder(trainer) -> str:
    folder = trainer.config.trainer.default_local_dir
    return os.path.join(folder if os.path.isabs(folder) else os.path.join(os.getcwd(), folder), f"global_step_{trainer.global_steps}")


def install_resume_hook() -> None:
    """Wrap RayPPOTrainer._save_checkpoint/_load_checkpoint (in this process) for the exact resume described above."""
    import torch
    from omegaconf import open_dict

    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    if getattr(RayPPOTrainer._load_checkpoint, "_tre_hooked", False):
        return
    orig_save, orig_load = RayPPOTrainer._save_checkpoint, RayPPOTrainer._load_checkpoint

    def save_checkpoint(self):
        folder = _step_folder(self)
        os.makedirs(folder, exist_ok=True)
        # before verl's own save, which writes latest_checkpointed_iteration.txt last: a checkpoint verl resumes from
        # always has this file
        torch.save(driver_rng_state(self), os.path.join(folder, DRIVER_STATE))
        return orig_save(self)

    def load_checkpoint(self):
        result = orig_load(self)
        if self.global_steps <= 0:  # a fresh start: nothing was restored
            return result
        path = os.path.join(_step_folder(self), DRIVER_STATE)
        if os.path.exists(path):
            restore_after_next_iter(self, torch.load(path, weights_only=False))
        else:
            print(f"Warning: no {DRIVER_STATE} in the checkpoint (made by another version); validation order may differ")
        with open_dict(self.config):
            self.config.trainer.val_before_train = False
            if self.global_steps >= self.total_training_steps:
                print(f"checkpoint step {self.global_steps} is the last of {self.total_training_steps}: nothing to train")
                self.config.trainer.total_epochs = 0  # fit()'s epoch loop then runs no step
        return result

    save_checkpoint._tre_hooked = load_checkpoint._tre_hooked = True
    RayPPOTrainer._save_checkpoint, RayPPOTrainer._load_checkpoint = save_checkpoint, load_checkpoint
