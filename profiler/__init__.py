"""block.profiler: measure a model's layer operators on the GPU it will run on.

`block profile --model NAME --tp 1 --out DIR` builds one transformer layer's operators with random
bf16 weights (shapes from the model catalogue or an HF config file, nothing downloaded), times them
with CUDA events, and writes Vidur-format `mlp.csv` and `attention.csv` plus a `meta.json` saying
which GPU, driver, torch and attention kernel produced them.

Only `grids`, `sharding` and `tables` are importable without PyTorch; `ops`, `timing`, `measure`
and `runner` need the `gpu` extra and are imported lazily by the command handler.
"""

from block.profiler import grids, sharding, tables

__all__ = ["grids", "sharding", "tables"]
