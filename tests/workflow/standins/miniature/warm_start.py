"""Stand-in: `python -m miniature.warm_start --model DIR --data PARQUET... --out DIR ...`, its argv parsed and its
--out checked by the real CLI; writes the model directory's config.json and the real warm-start record file."""
import json
import sys

from _standin import real_module, record

record("warm_start")
real = real_module("miniature.warm_start")
args = real.parse_args()
try:
    real.check_out(args.out)
except real.WarmStartError as exc:
    print(f"error: {exc}", file=sys.stderr)  # as the real CLI
    sys.exit(2)
args.out.mkdir(parents=True, exist_ok=True)
(args.out / "config.json").write_text('{"model_type": "qwen2"}\n')
(args.out / real.RECORD).write_text(json.dumps({"base": str(args.model), "data": [str(p) for p in args.data]}) + "\n")
