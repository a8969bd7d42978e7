"""Stand-in: python -m miniature.tiny_model --out DIR --kind both"""
from _standin import arg, record, write

record("tiny_model")
assert arg("--kind") == "both"
for kind in ("policy", "reward"):
    write(f"{arg('--out')}/{kind}/config.json", '{"model_type": "qwen2"}\n')
