"""Flags the operator sets, which `spec.*.args` may not set again (pure).

A user's arguments come after the operator's on each command line, and the last occurrence of a
flag wins: `scheduler.args: [--discover, static, --replicas, http://...]` would replace the
gateway's discovery with addresses of the user's choosing. So every flag the operator sets, and
every flag that changes where a process listens, what it routes to or which credentials it
reads, is reserved; named, validated spec fields set what may change (`scheduler.policy`,
`scheduler.apiKeys`, `engine.scheduling`, ...).

An argument is refused when its name (the part before `=`, underscores read as dashes as vLLM
reads them) is a reserved flag or a prefix of one: argparse accepts unambiguous abbreviations
(`--disc static` is `--discover static`). The CRD's CEL rule and `refused` apply the same test.
"""

from __future__ import annotations

from collections.abc import Iterable

# The engine's scheduler settings come from spec.engine.scheduling (the engine and the twin in
# the predictor must agree); `--chunk-size` is Block's alias of --max-num-batched-tokens.
SCHEDULING: tuple[str, ...] = (
    "--max-num-seqs",
    "--max-num-batched-tokens",
    "--chunk-size",
    "--block-size",
    "--enable-prefix-caching",
    "--no-enable-prefix-caching",
)
# vLLM (`-tp` is its short --tensor-parallel-size) and `block engine`: the engine listens on the
# pod's loopback only, for its sidecar.
ENGINE: tuple[str, ...] = (
    "--host",
    "--port",
    "--model",
    "--gpu",
    "--tp",
    "--tensor-parallel-size",
    "-tp",
    *SCHEDULING,
)
# `block predictor`: its engine is the one beside it, its profile the spec's.
PREDICTOR: tuple[str, ...] = (
    "--host",
    "--port",
    "--engine-url",
    "--gpu",
    "--model",
    "--tp",
    *SCHEDULING,
)
# `block gateway` and `block epp`: listeners, discovery, policy, credentials, cluster config.
# `--envoy-concurrency` is only a default of the operator's (Envoy's worker count): args may
# change it.
SCHEDULER: tuple[str, ...] = (
    "--host",
    "--port",
    "--grpc-port",
    "--admin-port",
    "--policy",
    "--discover",
    "--replicas",
    "--replicas-dns",
    "--namespace",
    "--service",
    "--port-name",
    "--cluster-config",
    "--admin-token-file",
    "--api-keys-file",
)


def flag_name(arg: str) -> str:
    """What argparse (and vLLM's parser, which reads `_` as `-`) takes as the option's name."""
    return arg.replace("_", "-").split("=", 1)[0]


def refused(args: Iterable[str], reserved: Iterable[str]) -> list[str]:
    """The arguments that set (or abbreviate) a reserved flag, in order."""
    names = tuple(reserved)
    out = []
    for arg in args:
        if not arg.startswith("-"):
            continue  # a value, not a flag
        name = flag_name(arg)
        if any(r.startswith(name) for r in names):
            out.append(arg)
    return out


def cel_rule(reserved: Iterable[str]) -> str:
    """The same test as `refused`, as a CEL rule on one argument (a string)."""
    listed = ", ".join(f"'{r}'" for r in reserved)
    return (
        "!self.startsWith('-') || "
        f"![{listed}].exists(r, r.startsWith(self.replace('_', '-').split('=')[0]))"
    )
