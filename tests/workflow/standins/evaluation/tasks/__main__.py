"""Stand-in: python -m evaluation.tasks prepare TASK --out DIR ..."""
import sys

from _standin import arg, record, write

record("prepare")
assert sys.argv[1] == "prepare", sys.argv
write(f"{arg('--out')}/train.parquet", "train\n")
write(f"{arg('--out')}/test.parquet", "test\n")
