"""The HH reward model: TRL training (`train`), the FastAPI scoring server (`server`), shared scoring (`scoring`), and
the server as a child process for the length of a `with` block (`lifecycle.running_server`; the launcher uses it).

CLI: `python -m evaluation.reward_model train ...` and `python -m evaluation.reward_model serve ...`.
"""
