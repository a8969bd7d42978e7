"""The CPU miniature's models: the tiny policy and reward model built offline, and the warm start that teaches the policy
the answer format."""
