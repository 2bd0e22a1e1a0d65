"""block.scheduler: the endpoint picker that routes requests by predicted latency, and the
gateway that runs it behind Envoy.

    from block.scheduler import SchedulerSettings, create_app, envoy_gateway

    app = create_app(SchedulerSettings(replicas=["http://127.0.0.1:8101"]))
    gateway = await envoy_gateway.start(app)  # Envoy + the picker; gateway.url

Modules: `epp` (the ext_proc endpoint picker), `epp_protocol` (the names it shares with the
data plane), `epp_serving` (its gRPC server and admin app), `envoy_config` (Envoy's bootstrap,
pure), `envoy_gateway` (`block gateway`: Envoy as a child process beside the picker), `service`
(the picker's state and admin app), `answers` (problem+json), `routing` (candidates, fan-out,
policy, admission), `predicting` / `predictconn` (predictor fan-out over keep-alive pools),
`replicas` (what the picker knows of each replica, in-flight accounting), `discovery` /
`endpointslices` (static list or Kubernetes), `health` (readiness probes), `parsing` (OpenAI
bodies), `lengths` (response-length estimates), `auth` (API keys), `autoscaling_api`,
`metrics`, `settings`. Policies are `block.simulator.policies`, shared with the offline cluster
model.
"""

from block.scheduler.service import create_app
from block.scheduler.settings import SchedulerSettings

__all__ = ["SchedulerSettings", "create_app"]
