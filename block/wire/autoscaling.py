"""The gateway's autoscaling API, read by the operator's autoscaler timer.

For the gateway engineer, what to serve (JSON bodies are these models):

- `GET /v1/autoscaling/load` -> `LoadReport`: arrivals in the last `interval_seconds`
  (count and the coefficient of variation of their gaps), a sample of recent request sizes
  (at most 512 `[prompt_tokens, output_tokens]` pairs, newest last; output = the tokens the
  engine generated), and each replica's load figures as the router last saw them, with the
  replica's pod name so the operator can annotate the pod. `predicted_drain_seconds` is the
  predictor's time-until-idle if the replica took nothing more (null when not known).
- `POST /v1/autoscaling/drain` with `DrainRequest` -> `DrainStatus`: stop routing new requests
  to that replica (idempotent); in-flight requests finish. `draining: false` undoes it.
  404 problem+json when the gateway does not know the replica.

The operator polls `load` each control interval; a draining replica shows `draining: true`,
and it is removed once `num_running + num_waiting == 0` or the drain bound passes.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, Strict

from block.wire import WireModel

Count = Annotated[int, Field(ge=0)]


class ReplicaLoad(WireModel):
    name: Annotated[str, Field(min_length=1, max_length=253)]  # the engine pod's name
    num_running: Count = 0
    num_waiting: Count = 0
    kv_used_blocks: Count = 0
    kv_total_blocks: Count = 0
    waiting_prefill_tokens: Count = 0
    predicted_drain_seconds: Annotated[float, Field(ge=0)] | None = None
    ready: bool = True
    draining: bool = False


class LoadReport(WireModel):
    interval_seconds: Annotated[float, Field(gt=0)]
    arrivals: Count  # requests received in the last interval
    interarrival_cv: Annotated[float, Field(ge=0)] = 1.0
    sizes: Annotated[
        # A JSON array is a pair here: the one place where a list stands for a tuple.
        list[
            Annotated[
                tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]], Strict(False)
            ]
        ],
        Field(max_length=512),
    ] = Field(default_factory=list)
    replicas: list[ReplicaLoad] = Field(default_factory=list)


class DrainRequest(WireModel):
    replica: Annotated[str, Field(min_length=1, max_length=253)]
    draining: bool = True


class DrainStatus(WireModel):
    replica: str
    draining: bool
    num_running: Count = 0
    num_waiting: Count = 0
