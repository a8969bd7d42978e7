"""The HH reward model: TRL training (`train`), the FastAPI scoring server (`server`) and shared scoring (`scoring`).

CLI: `python -m evaluation.reward_model train ...` and `python -m evaluation.reward_model serve ...`.
"""
