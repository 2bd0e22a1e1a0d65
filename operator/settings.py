"""Operator settings: environment variables `BLOCK_OPERATOR_*`, overridden by CLI flags.

Built once in `block operator run` and passed down; nothing reads the environment later.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from block import __version__


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BLOCK_OPERATOR_", frozen=True, extra="ignore")

    # Block's own image, run for the predictor sidecars, the gateways and engine twins. The chart
    # sets it to the image it runs the operator from; `docker build -t block:<version> .` makes
    # the default.
    image: str = f"block:{__version__}"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    # The cluster's DNS domain (the kubelet's --cluster-domain): the standalone gateway's Envoy
    # resolves the engines' headless Service by its fully qualified name under it.
    cluster_domain: Annotated[
        str, Field(min_length=1, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    ] = "cluster.local"
    # Namespaces to watch; empty: every namespace (needs the chart's ClusterRole).
    namespaces: tuple[str, ...] = ()
    # Server-side apply field manager: names the operator in managedFields.
    field_manager: str = "block-operator"
    # Every BlockCluster is re-applied this often even without events, seconds: a safety net
    # for missed watch events; drift is normally repaired at once from the children's events.
    resync_interval_s: Annotated[float, Field(gt=0)] = 60.0
    # Wait before retrying a reconcile that failed for a passing reason, seconds; doubled on
    # each failure in a row up to retry_max_delay_s (an apiserver that keeps refusing is not
    # asked every few seconds forever; the status says why meanwhile).
    retry_delay_s: Annotated[float, Field(gt=0)] = 5.0
    retry_max_delay_s: Annotated[float, Field(gt=0)] = 300.0
    # Timeout of each Kubernetes API request, seconds.
    request_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    # Port of the liveness endpoint (/healthz) for the kubelet's probe; 0: none.
    liveness_port: Annotated[int, Field(ge=0, le=65535)] = 0
    # Address it listens on: every interface in a pod (the kubelet probes the pod IP).
    liveness_host: str = "0.0.0.0"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Auto-provisioning (BlockClusters with spec.autoscaling.enabled; the resync timer is its
    # control interval): an engine replica's start-up lead time (pull, load weights, warm up)
    # and the bound on draining a replica before it is removed anyway, seconds.
    autoscaler_lead_s: Annotated[float, Field(ge=0)] = 180.0
    autoscaler_drain_timeout_s: Annotated[float, Field(gt=0)] = 300.0
    # The gateway the autoscaler reads load from, for every cluster (an operator outside the
    # cluster, tests); empty: each cluster's own gateway Service.
    autoscaler_gateway_url: str = ""
