"""block.experiments: reproducible experiments (`block experiment <name>`) and the load generator.

Each experiment is one module exposing `add_arguments(parser)` and `run(args) -> int`, listed in
`commands.EXPERIMENTS`. Experiments write CSV, PNG plots and a markdown table into `--out`.
"""
