"""block.scheduler: the OpenAI-compatible gateway that routes requests by predicted latency.

    from block.scheduler import SchedulerSettings, create_app

    app = create_app(SchedulerSettings(replicas=["http://127.0.0.1:8101"]))

Modules: `service` (the app), `serving` (runs it behind `frontdoor`, the listener with a lean
path for whole completions and aiohttp for the rest), `answers` (answers and problem+json),
`routing` (candidates, fan-out, policy, admission),
`predicting` (predictor fan-out), `proxying` (relay and retries), `replicas` (what the gateway
knows of each replica, in-flight accounting), `discovery` / `endpointslices` (static list or
Kubernetes), `health` (readiness probes), `parsing` (OpenAI bodies), `lengths` (response-length
estimates), `auth` (API keys), `metrics`, `settings`. Policies are
`block.simulator.policies`, shared with the offline cluster model.
"""

from block.scheduler.service import create_app
from block.scheduler.settings import SchedulerSettings

__all__ = ["SchedulerSettings", "create_app"]
