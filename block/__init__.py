"""Block: route LLM requests by predicted latency and provision replicas from predicted load.

The root package holds what every component shares: the CLI (`block.cli`), wire models
(`block.wire`), the error tree (`block.errors`) and logging set-up (`block.logs`). Components
live in their own subpackages: `block.simulator`, `block.predictor`, `block.scheduler`,
`block.estimator` and `block.operator`.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
