"""Stand-in: `python -m figures ...` is the real CLI (collect, every table and figure); `dists` has only the models'
next-token distributions replaced: it writes the distributions file with its real columns and no rows."""
import sys

from _standin import real_module, record
from figures import next_token
from figures.common import DISTS_FILE, atomic_write_text


def extract(models, messages, results, *args, **kwargs):
    """The distributions file, empty: the stand-in models have no weights to ask."""
    path = results / DISTS_FILE
    atomic_write_text(path, ",".join(next_token.DIST_COLUMNS) + "\n")
    return path


record(f"figures.{sys.argv[1]}")
next_token.extract = extract
sys.exit(real_module("figures.__main__").main(sys.argv[1:]))
