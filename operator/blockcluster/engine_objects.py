"""The engine replicas: a Deployment of engine + predictor-sidecar pods, and their Services.

Each pod runs the engine (stock vLLM, or `block engine`, the simulated twin) on
`ENGINE_PORT` of the pod's loopback, and `block predictor` on `PREDICTOR_PORT` in front of it:
the sidecar is the one way to the engine (nothing outside the pod can reach the engine, so
nothing gets around the sidecar's twin, limits and keys). The kubelet probes the pod's IP, so
the engine's liveness (and vLLM's start-up) probe runs inside the container (`python3`, which
both images have); readiness is the sidecar's, whose `/readyz` fails while the engine does.
Both Services target the predictor:

- `NAME-engine` (ClusterIP): the pickers discover replicas through its EndpointSlices.
- `NAME-engine-headless` (no cluster IP): its DNS name resolves to every ready replica's pod
  IP, which is how the standalone gateway's Envoy learns its hosts. Envoy's `override_host`
  load balancer only sends to hosts its cluster knows, so a ClusterIP (one virtual IP) would
  leave it nowhere to send the picker's choice. It is a second Service rather than the first
  made headless because a Service's clusterIP cannot change once set: clusters created by an
  older operator would be stuck.
"""

from __future__ import annotations

from typing import Any

from block.operator.blockcluster import config_objects, meta, specs

COMPONENT = "engine"
GPU_RESOURCE = "nvidia.com/gpu"
TWIN_RESOURCES = {
    "requests": {"cpu": "250m", "memory": "256Mi"},
    "limits": {"memory": meta.BLOCK_MEMORY_LIMIT},
}
PREDICTOR_RESOURCES = {
    "requests": {"cpu": "250m", "memory": "256Mi"},
    "limits": {"memory": meta.BLOCK_MEMORY_LIMIT},
}
# The engine's own address: the pod's loopback, where only its sidecar connects.
ENGINE_HOST = "127.0.0.1"
HEALTH_CHECK = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)"
# vLLM loads weights before /health answers: allow it half an hour before the kubelet gives up.
VLLM_STARTUP_PERIOD_S = 10
VLLM_STARTUP_FAILURES = 180
# In-flight requests get this long to finish when a pod stops (rollout, scale-down).
TERMINATION_GRACE_S = 60


def engine_argv(cluster: meta.ClusterRef, spec: specs.BlockClusterSpec) -> list[str]:
    """The engine container's arguments (after the image's entry point for vLLM)."""
    engine = spec.engine
    if engine.kind == "vllm":
        base = [
            "--model", spec.model,
            "--host", ENGINE_HOST,
            "--port", str(meta.ENGINE_PORT),
            "--tensor-parallel-size", str(engine.tensor_parallel),
            *engine.scheduling.argv(),
        ]  # fmt: skip
    else:
        base = [
            "--host", ENGINE_HOST,
            "--port", str(meta.ENGINE_PORT),
            "--gpu", engine.gpu,
            "--model", spec.model,
            "--tp", str(engine.tensor_parallel),
            *engine.scheduling.argv(),
        ]  # fmt: skip
    return [*base, *engine.args]


def predictor_argv(cluster: meta.ClusterRef, spec: specs.BlockClusterSpec) -> list[str]:
    return [
        "--host", "0.0.0.0",
        "--port", str(meta.PREDICTOR_PORT),
        "--engine-url", f"http://{ENGINE_HOST}:{meta.ENGINE_PORT}",
        "--gpu", spec.engine.gpu,
        "--model", spec.model,
        "--tp", str(spec.engine.tensor_parallel),
        # The same scheduler settings as the engine's: its twin simulates that scheduler.
        *spec.engine.scheduling.argv(),
        *spec.predictor.args,
    ]  # fmt: skip


def health_probe(period_s: int, failure_threshold: int) -> dict[str, Any]:
    """GET /health of the engine on the pod's loopback, from inside its container."""
    url = f"http://{ENGINE_HOST}:{meta.ENGINE_PORT}/health"
    return {
        "exec": {"command": ["python3", "-c", HEALTH_CHECK, url]},
        "periodSeconds": period_s,
        "timeoutSeconds": 5,
        "failureThreshold": failure_threshold,
    }


def _engine_container(
    cluster: meta.ClusterRef, spec: specs.BlockClusterSpec, settings: meta.RenderSettings
) -> dict[str, Any]:
    engine = spec.engine
    container: dict[str, Any] = {
        "name": "engine",
        # No containerPort: the engine listens on the pod's loopback only.
        "env": [e.model_dump() for e in engine.env],
        "livenessProbe": health_probe(10, 6),
    }
    if engine.kind == "vllm":
        # Only the GPU count is ours; every other resource is the user's to set.
        gpus = {GPU_RESOURCE: str(engine.tensor_parallel)}
        container.update(
            image=engine.image,
            imagePullPolicy=settings.image_pull_policy,
            args=engine_argv(cluster, spec),
            resources=meta.resources(engine.resources, {"limits": gpus, "requests": gpus}),
            startupProbe=health_probe(VLLM_STARTUP_PERIOD_S, VLLM_STARTUP_FAILURES),
        )
    else:
        container.update(
            image=engine.image or settings.block_image,
            imagePullPolicy=settings.image_pull_policy,
            command=["block", "engine"],
            args=engine_argv(cluster, spec),
            resources=meta.resources(engine.resources, TWIN_RESOURCES),
            securityContext=meta.restricted_security_context(meta.BLOCK_UID),
            volumeMounts=[{"name": "tmp", "mountPath": "/tmp"}],
        )
    return container


def _predictor_container(
    cluster: meta.ClusterRef, spec: specs.BlockClusterSpec, settings: meta.RenderSettings
) -> dict[str, Any]:
    return {
        "name": "predictor",
        "image": spec.predictor.image or settings.block_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["block", "predictor"],
        "args": predictor_argv(cluster, spec),
        "ports": [{"name": "http", "containerPort": meta.PREDICTOR_PORT, "protocol": "TCP"}],
        "env": config_objects.env(),
        "resources": meta.resources(spec.predictor.resources, PREDICTOR_RESOURCES),
        "readinessProbe": meta.http_probe("/readyz", "http", 5, 3),
        "livenessProbe": meta.http_probe("/healthz", "http", 10, 6),
        "securityContext": meta.restricted_security_context(meta.BLOCK_UID),
        "volumeMounts": [config_objects.volume_mount(), {"name": "tmp", "mountPath": "/tmp"}],
    }


def deployment(
    cluster: meta.ClusterRef,
    spec: specs.BlockClusterSpec,
    settings: meta.RenderSettings,
    config_hash: str,
) -> dict[str, Any]:
    selector = meta.selector_labels(cluster, COMPONENT)
    pod_spec: dict[str, Any] = {
        # Neither container talks to the Kubernetes API.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
        "containers": [
            _engine_container(cluster, spec, settings),
            _predictor_container(cluster, spec, settings),
        ],
        "volumes": [config_objects.pod_volume(cluster), {"name": "tmp", "emptyDir": {}}],
        # Spread replicas over nodes where possible: one node failure takes one replica.
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": selector},
                        },
                    }
                ]
            }
        },
    }
    if spec.engine.node_selector:
        pod_spec["nodeSelector"] = dict(spec.engine.node_selector)
    if spec.engine.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.engine.tolerations]
    return meta.deployment(cluster, COMPONENT, spec.replicas, config_hash, pod_spec)


def service(cluster: meta.ClusterRef) -> dict[str, Any]:
    return meta.http_service(cluster, COMPONENT)


HEADLESS_PART = "engine-headless"


def headless_service(cluster: meta.ClusterRef) -> dict[str, Any]:
    """Every ready replica's sidecar by DNS (A records of the pod IPs; no virtual IP)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta.metadata(cluster, HEADLESS_PART, COMPONENT),
        "spec": {
            "clusterIP": "None",
            "selector": meta.selector_labels(cluster, COMPONENT),
            # Only ready replicas resolve: a starting engine gets no traffic, not even the
            # round-robin Envoy falls back to when the picker is down.
            "publishNotReadyAddresses": False,
            "ports": [
                {
                    "name": "http",
                    "port": meta.PREDICTOR_PORT,
                    "targetPort": "http",
                    "protocol": "TCP",
                }
            ],
        },
    }


def replicas_dns(cluster: meta.ClusterRef, settings: meta.RenderSettings) -> str:
    """`NAME:PORT` of the headless Service for `block gateway --replicas-dns`: fully qualified,
    so Envoy's resolver makes one lookup, not one per search domain, and with the sidecar's own
    port (a headless Service maps no ports: clients connect to the pod IPs directly)."""
    name = meta.child_name(cluster, HEADLESS_PART)
    host = f"{name}.{cluster.namespace}.svc.{settings.cluster_domain}"
    return f"{host}:{meta.PREDICTOR_PORT}"
