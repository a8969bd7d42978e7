"""Stand-in: python -m figures collect RUNS --results R | dists --runs RUNS ... | NAME"""
import json
import sys
from pathlib import Path

from _standin import arg, record, write

record(f"figures.{sys.argv[1]}")
if sys.argv[1] == "collect":
    runs = sorted(str(p.parent) for p in Path(sys.argv[2]).rglob("summary.json"))
    for name in ("metrics", "runs", "eval"):
        write(f"{arg('--results')}/{name}.csv", "run\n" + "\n".join(runs) + "\n")
    write(f"{arg('--results')}/provenance.json", json.dumps({"runs": runs}))
elif sys.argv[1] == "dists":
    write(f"{arg('--results')}/next_token_dists.csv", "stage,rank,prob\n")
elif sys.argv[1].startswith("table"):
    for ext in ("csv", "md", "tex"):
        write(f"results/tables/{sys.argv[1]}.{ext}", "method\n")
else:
    for ext in ("pdf", "png"):
        write(f"results/figures/{sys.argv[1]}.{ext}", json.dumps({"figure": sys.argv[1]}))
