"""Stand-in: python -m miniature.warm_start --model DIR --data PARQUET... --out DIR ..."""
import sys

from _standin import arg, record, write

record("warm_start")
data = sys.argv[sys.argv.index("--data") + 1:sys.argv.index("--out")]
write(f"{arg('--out')}/config.json", '{"model_type": "qwen2", "warm_start_data": %d}\n' % len(data))
