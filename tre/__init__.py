"""TRE: trust-region entropy for PPO on LLMs; the kernel and (in tre.backend) the verl integration."""

from tre.kernel import DEFAULT_MAX_CANDIDATES, trust_region_entropy, trust_region_stats

__all__ = ["trust_region_entropy", "trust_region_stats", "DEFAULT_MAX_CANDIDATES"]
