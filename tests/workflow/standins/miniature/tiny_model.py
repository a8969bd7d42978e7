"""Stand-in: `python -m miniature.tiny_model --out DIR --kind both ...`, its argv parsed by the real parser; writes
only each model directory's config.json (no tokenizer, no weights)."""
from pathlib import Path

from _standin import real_module, record

record("tiny_model")
args = real_module("miniature.tiny_model").parse_args()
for kind in ("policy", "reward") if args.kind == "both" else (args.kind,):
    out = Path(args.out, kind) if args.kind == "both" else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text('{"model_type": "qwen2"}\n')
