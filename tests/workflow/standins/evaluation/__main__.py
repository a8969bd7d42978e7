"""Stand-in: `python -m evaluation evaluate RUN_DIR ...` is the real CLI (parser, the run's config and checkpoints,
the task's scorer, the samples.jsonl and scores.json writers) with only the sampling replaced: every prompt gets the
same canned response, scored as the real step scores it (HH: through the reward server the launcher runs)."""
import sys

import evaluation.evaluate
from _standin import real_module, record

RESPONSE = "abcd"  # the stand-in reward server scores a response by its length: 4.0


def generate(model_dir, examples, n, max_new_tokens, **kwargs) -> list[list[str]]:
    """n canned responses per prompt, in place of sampling the checkpoint."""
    return [[RESPONSE] * n for _ in examples]


record("evaluate")
evaluation.evaluate.generate = generate
sys.exit(real_module("evaluation.__main__").main(sys.argv[1:]))
