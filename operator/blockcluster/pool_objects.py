"""The InferencePool (Gateway API Inference Extension, `inference.networking.k8s.io/v1`).

Where a cluster has the InferencePool CRD, a Gateway API implementation can route an
HTTPRoute's traffic to a pool of model servers and ask the pool's endpoint picker which one
serves each request. The operator then renders, besides the standalone gateway, one pool per
BlockCluster: its members are the engine pods (by the labels the engine Deployment selects
them by), its target port is the predictor sidecar's (which proxies the OpenAI API and keeps the
twin that predictions come from), and its picker is `block epp` (`epp_objects`).

`failureMode: FailOpen`: with the picker down the gateway still sends requests to some pool
member, as the standalone gateway falls back to round-robin, rather than failing them.
Field names follow the v1 CRD as published (`config/crd/bases/
inference.networking.k8s.io_inferencepools.yaml`, vendored for the tests under tests/k8s/).
"""

from __future__ import annotations

from typing import Any

from block.operator.blockcluster import engine_objects, epp_objects, meta

GROUP = "inference.networking.k8s.io"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferencePool"
PLURAL = "inferencepools"
CRD_NAME = f"{PLURAL}.{GROUP}"
PART = "pool"
FAILURE_MODE = "FailOpen"


def inference_pool(cluster: meta.ClusterRef) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": meta.metadata(cluster, PART, PART),
        "spec": {
            "selector": {"matchLabels": meta.selector_labels(cluster, engine_objects.COMPONENT)},
            "targetPorts": [{"number": meta.PREDICTOR_PORT}],
            "appProtocol": "http",
            "endpointPickerRef": {
                "group": "",
                "kind": "Service",
                "name": meta.child_name(cluster, epp_objects.COMPONENT),
                "port": {"number": meta.EPP_GRPC_PORT},
                "failureMode": FAILURE_MODE,
            },
        },
    }


def name(cluster: meta.ClusterRef) -> str:
    """What an HTTPRoute's backendRef names (group inference.networking.k8s.io)."""
    return meta.child_name(cluster, PART)
