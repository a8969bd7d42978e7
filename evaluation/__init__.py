"""Evaluation side of the TRE harness: tasks (prepare, score), reward model, checkpoint evaluation."""
