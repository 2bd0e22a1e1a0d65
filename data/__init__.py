"""The data Block ships with: where the installed package keeps it.

`block.data` is a package of files, not code: measured latency profiles, Vidur's operator and
collective tables, and the request traces the workloads and experiments read. Every reader goes
through these paths, so a wheel, a container image and a clone all find the same files with no
`../shared` beside them. `README.md` here says where each file comes from and under which licence.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent

# The project's own tables (profiled with `block profile`), searched before Vidur's.
PROFILES = ROOT / "profiles"
# Vidur's published per-operator tables (MIT): mlp.csv per GPU and model.
VIDUR_COMPUTE = ROOT / "vidur" / "compute"
# Vidur's collective timings (all_reduce.csv, send_recv.csv) per node type.
VIDUR_NETWORK = ROOT / "vidur" / "network"
# Request traces: Azure conversation (CC-BY 4.0), arXiv summarisation (MIT), ServeGen rates.
TRACES = ROOT / "traces"
