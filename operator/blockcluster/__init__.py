"""block.operator.blockcluster: the BlockCluster resource.

Pure parts (`specs`, `crd_objects`, `*_objects`, `children`, `conditions`) render and judge;
`reconciling` does the I/O of one reconcile; `handlers` connects it to kopf.
"""

from block.operator.blockcluster.specs import BlockClusterSpec, BlockClusterStatus

__all__ = ["BlockClusterSpec", "BlockClusterStatus"]
