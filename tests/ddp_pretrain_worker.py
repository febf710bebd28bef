"""One rank of the distributed pre-training test, started by torchrun.

Usage: ``python -m torch.distributed.run --nproc_per_node 2 ddp_pretrain_worker.py OUT RECIPE [KEY=VALUE ...]``.
Each rank trains with the overrides and writes ``OUT/rank<N>.json``: its micro-batch draws,
chip ids, losses and a fingerprint of its parameters.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch


def main() -> None:
    out, recipe_path, *overrides = sys.argv[1:]
    torch.set_num_threads(1)
    from ramen_core.training import load_recipe, parameter_fingerprint, pretrain

    recipe = load_recipe(recipe_path, overrides)
    result = pretrain(recipe, keep_history=True)
    rank = int(os.environ["RANK"])
    record = {
        "rank": rank,
        "world_size": int(os.environ["WORLD_SIZE"]),
        "history": result.history,
        "fingerprint": parameter_fingerprint(result.model),
        "checkpoint": None if result.checkpoint is None else str(result.checkpoint),
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
