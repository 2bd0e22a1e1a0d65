"""The names the endpoint picker and its data plane agree on: the Gateway API Inference
Extension's endpoint-picker protocol (its proposal 004), and what `block gateway`'s Envoy
bootstrap adds. Both sides import them from here: `epp` (the picker) and `envoy_config` (the
data plane it renders).
"""

from __future__ import annotations

# The protocol's: the picked endpoints (header, and the same value in dynamic metadata under
# LB_NAMESPACE), the one that served (response side), and the data plane's subset hint.
DESTINATION = "x-gateway-destination-endpoint"
SERVED = "x-gateway-destination-endpoint-served"
SUBSET = "x-gateway-destination-endpoint-subset"
LB_NAMESPACE = "envoy.lb"
SUBSET_NAMESPACE = "envoy.lb.subset_hint"
# The ext_proc service's name, also a gRPC health service name.
SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"

# Block's own: the length estimate sent on to the replica's sidecar, and the prefix of the
# `details` of the picker's immediate responses (so the data plane leaves their bodies alone).
OUTPUT_TOKENS_HEADER = "x-block-output-tokens"
# Envoy's per-attempt time limit to the response headers, which the picker sets per request.
PER_TRY_TIMEOUT_HEADER = "x-envoy-upstream-rq-per-try-timeout-ms"
PICKER_DETAILS_PREFIX = "block_epp_"
