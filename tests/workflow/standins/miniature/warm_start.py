"""Stand-in: `python -m miniature.warm_start --model DIR --data PARQUET... --out DIR ...`, its argv parsed, its --out
checked and its demonstrations read from the data files by the real module; no training: writes the model directory's
config.json and the real record file without the training's fields."""
import json
import sys
from dataclasses import asdict

from _standin import real_module, record

record("warm_start")
real = real_module("miniature.warm_start")
args = real.parse_args()
settings = real.Settings(steps=args.steps, lr=args.lr, batch_size=args.batch_size, warmup=args.warmup, seed=args.seed,
                         plain_fraction=args.plain_fraction)
try:
    if not (args.model / "config.json").is_file():
        raise real.WarmStartError(f"model: {args.model} is not a model directory (no config.json)")
    real.check_out(args.out)
    pairs = real.demonstrations(args.data, plain_fraction=settings.plain_fraction, seed=settings.seed)
except real.WarmStartError as exc:
    print(f"error: {exc}", file=sys.stderr)  # as the real CLI
    sys.exit(2)
args.out.mkdir(parents=True, exist_ok=True)
(args.out / "config.json").write_text('{"model_type": "qwen2"}\n')
(args.out / real.RECORD).write_text(json.dumps({"base": str(args.model), "data": [str(p) for p in args.data],
                                                "examples": len(pairs), **asdict(settings)}, indent=1) + "\n")
