"""block.operator: the Kubernetes operator (kopf) for BlockCluster resources.

It turns a BlockCluster into engine replicas with predictor sidecars, a gateway and their
Services (`block.operator.blockcluster`), and leaves the replica count to an advisor seam
(`block.operator.autoscaling`). Run with `block operator run`; install with the Helm chart.
Nothing is imported here: `block --help` loads `block.operator.commands` through this package
and must stay fast.
"""

__all__: list[str] = []
