"""`block operator run`: wire settings, the Kubernetes client and handlers into kopf, and run.

Nothing is registered at import time: `build_registry` makes a fresh kopf registry for the
given settings, so two operators (or a test and an operator) never share handlers.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from block.operator import autoscaling, credentials, kube, provisioning
from block.operator.blockcluster import children, handlers, meta, reconciling
from block.operator.settings import OperatorSettings

logger = logging.getLogger(__name__)


def api_client() -> Any:
    """A `kubernetes.client.ApiClient`: in-cluster credentials in a pod, else the kubeconfig."""
    from kubernetes import client, config

    # The client's loaders carry no type hints.
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """kopf's own settings, applied at start-up."""
    # Keep kopf's bookkeeping in our annotations: the CRD's structural schema would prune
    # kopf's default `status.kopf` fields.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="block.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="block.dev", key="last-handled-configuration"
    )
    # Events for what a person should see (invalid specs, failures), not every success.
    settings.posting.level = logging.WARNING
    # Watch only the operator's own children, filtered by the apiserver: a cluster's thousands
    # of ConfigMaps and Services are none of its business.
    for api_version, kind in children.CHILD_KINDS:
        selector = f"{meta.MANAGED_BY_LABEL}={meta.MANAGED_BY},{meta.CLUSTER_LABEL}"
        settings.watching.label_selectors[api_version, kube.PLURALS[(api_version, kind)]] = selector
    # Re-establish watches regularly so a silently dropped connection costs minutes at most.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330


def build_registry(
    settings: OperatorSettings,
    kube_api: kube.Kube,
    advisor: autoscaling.ReplicaAdvisor | None = None,
) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry)(kopf.login_via_client)
    kopf.on.startup(registry=registry)(configure)
    reconciler = reconciling.Reconciler(
        kube=kube_api,
        render_settings=meta.RenderSettings(
            settings.image, settings.image_pull_policy, settings.cluster_domain
        ),
        field_manager=settings.field_manager,
    )
    handlers.register(registry, reconciler, settings, advisor)
    return registry


def autoscaler(
    settings: OperatorSettings, client: Any, kube_api: kube.Kube | None = None
) -> provisioning.AdvisorService:
    """Block's predictive autoscaler for clusters that enable it (register it on the registry
    so its HTTP session opens and closes with the operator); it reads each cluster's admin
    token through `kube_api` (None: it sends no credentials, for gateways that ask none)."""
    service = provisioning.AdvisorService(
        client,
        interval_s=settings.resync_interval_s,
        lead_s=settings.autoscaler_lead_s,
        drain_timeout_s=settings.autoscaler_drain_timeout_s,
        tokens=credentials.AdminTokens(kube_api) if kube_api is not None else None,
    )
    if settings.autoscaler_gateway_url:
        url = settings.autoscaler_gateway_url.rstrip("/")
        service.gateway_url = lambda _cluster: url
    return service


def run(settings: OperatorSettings) -> int:
    client = api_client()
    kube_api = kube.ClientKube(client, timeout_s=settings.request_timeout_s)
    advisor = autoscaler(settings, client, kube_api)
    registry = build_registry(settings, kube_api, advisor)
    advisor.register(registry)
    liveness = None
    if settings.liveness_port:
        liveness = f"http://{settings.liveness_host}:{settings.liveness_port}/healthz"
    logger.info(
        "block operator watching %s, Block image %s",
        ", ".join(settings.namespaces) or "all namespaces", settings.image,
    )  # fmt: skip
    # Standalone: one operator replica (the chart runs one, with the Recreate strategy), so no
    # peering objects and no extra CRDs are needed.
    kopf.run(
        registry=registry,
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=liveness,
    )
    return 0
