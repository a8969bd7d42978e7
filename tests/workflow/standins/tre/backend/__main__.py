"""Stand-in: python -m tre.backend train --task T ... --run-dir DIR (writes the run-dir contract files)."""
import json
import os
import sys
import urllib.request

from _standin import arg, record, write

record("train")
assert sys.argv[1] == "train", sys.argv
run_dir, task = arg("--run-dir"), arg("--task")
reward = None
if task == "hh":  # score one response through the reward server the launcher started
    req = urllib.request.Request(os.environ["REWARD_SERVER_URL"], method="POST",
                                 data=json.dumps({"prompts": ["p"], "responses": ["abcd"]}).encode(),
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {os.environ['REWARD_SERVER_TOKEN']}"})
    reward = json.loads(urllib.request.urlopen(req, timeout=10).read())["rewards"][0]
write(f"{run_dir}/config.json", json.dumps({"task": task, "method": arg("--method"), "total_steps": 1,
                                           "argv": sys.argv[1:]}))
write(f"{run_dir}/metrics.jsonl", json.dumps({"step": 1, "critic/score/mean": 0.5}) + "\n")
write(f"{run_dir}/summary.json", json.dumps({"task": task, "size": arg("--size"), "method": arg("--method"),
                                             "seed": int(arg("--seed")), "steps": 1, "hh_reward": reward,
                                             "status": "completed"}))
