"""The `BlockCluster` CustomResourceDefinition: OpenAPI schema, CEL rules, columns, scale.

The chart (`charts/block/crds/`) and `manifests/crds/` ship the YAML this module renders
(`block operator crd` prints it; a test keeps the copies equal). Rules that span fields, or whose
default message would puzzle a user, are CEL rules with their own message; single-field bounds
stay plain OpenAPI so `kubectl explain` shows them.
"""

from __future__ import annotations

from typing import Any

from block.operator.blockcluster import catalogue, flags, specs

RawSchema = dict[str, Any]


def _string(description: str, **extra: Any) -> RawSchema:
    return {"type": "string", "description": description, **extra}


def _integer(description: str, default: int, minimum: int, maximum: int) -> RawSchema:
    return {
        "type": "integer",
        "format": "int32",
        "description": description,
        "default": default,
        "minimum": minimum,
        "maximum": maximum,
    }


def _positive_seconds(description: str) -> RawSchema:
    return {
        "type": "number",
        "description": description,
        "x-kubernetes-validations": [
            {"rule": "self > 0.0", "message": "must be a positive number of seconds"}
        ],
    }


def _args(description: str, where: str, reserved: tuple[str, ...]) -> RawSchema:
    """Extra arguments of one command, none of which may set a flag the operator sets."""
    return {
        "type": "array",
        "description": f"{description} Flags the operator sets are refused: {', '.join(reserved)}.",
        "maxItems": specs.MAX_ARGS,
        "items": {
            "type": "string",
            "maxLength": specs.MAX_ARG_LENGTH,
            "x-kubernetes-validations": [
                {
                    "rule": flags.cel_rule(reserved),
                    "message": f"{where} must not set flags the operator sets "
                    f"({', '.join(reserved)}, or abbreviations of them): use the spec's own "
                    "fields",
                }
            ],
        },
        "default": [],
    }


def _quantities() -> RawSchema:
    return {
        "type": "object",
        "maxProperties": specs.MAX_RESOURCES,
        "additionalProperties": {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "maxLength": specs.MAX_QUANTITY_LENGTH,  # bounds the CEL rule's cost
            "x-kubernetes-validations": [
                {
                    "rule": "type(self) == int ? self >= 0 : "
                    "(isQuantity(self) && !quantity(self).isLessThan(quantity('0')))",
                    "message": "must be a Kubernetes quantity that is not negative, "
                    "e.g. 500m, 2, 16Gi",
                }
            ],
        },
    }


def _resources(description: str) -> RawSchema:
    return {
        "type": "object",
        "description": description,
        "default": {},
        "properties": {"requests": _quantities(), "limits": _quantities()},
    }


def _image(description: str) -> RawSchema:
    return _string(description, minLength=1, maxLength=512)


def spec_schema() -> RawSchema:
    policies = ", ".join((*specs.POLICIES, specs.POLICY_HELP))
    policy_list = ", ".join(f"'{p}'" for p in specs.POLICIES)
    # Required, with no default: the default kind (vllm) needs an image only the user can name.
    engine = {
        "type": "object",
        "description": "The inference engine of each replica.",
        "properties": {
            "kind": {
                "type": "string",
                "description": "vllm (stock vLLM, needs GPUs) or twin (Block's simulated engine).",
                "enum": list(specs.ENGINE_KINDS),
                "default": "vllm",
            },
            "image": _image("Engine image; required for vllm, Block's image for the twin."),
            "gpu": _string(
                f"GPU type of the nodes ({', '.join(catalogue.gpus())}): picks the latency "
                "profile.",
                default="h100",
                minLength=1,
                maxLength=64,
            ),
            "tensorParallel": {
                "type": "integer",
                "format": "int32",
                "description": "GPUs per replica (tensor-parallel size). Block's profiles have: "
                + catalogue.profiled_sizes()
                + ".",
                "default": 1,
                "x-kubernetes-validations": [
                    {
                        "rule": "self in [1, 2, 4, 8]",
                        "message": "tensorParallel must be 1, 2, 4 or 8",
                    }
                ],
            },
            "scheduling": {
                "type": "object",
                "description": (
                    "The engine's scheduler settings (vLLM's flags), passed alike to the engine "
                    "and to the predictor sidecar; unset fields keep the engine's defaults."
                ),
                "default": {},
                "properties": {
                    "maxNumSeqs": {
                        "type": "integer",
                        "format": "int32",
                        "minimum": 1,
                        "maximum": 4096,
                        "description": "Most sequences in one batch (--max-num-seqs).",
                    },
                    "maxNumBatchedTokens": {
                        "type": "integer",
                        "format": "int32",
                        "minimum": 1,
                        "maximum": 1 << 20,
                        "description": "Token budget per step (--max-num-batched-tokens).",
                    },
                    "blockSize": {
                        "type": "integer",
                        "format": "int32",
                        "enum": [8, 16, 32, 64, 128],
                        "description": "Tokens per KV-cache block (--block-size).",
                    },
                    "enablePrefixCaching": {
                        "type": "boolean",
                        "description": "Automatic prefix caching (--[no-]enable-prefix-caching).",
                    },
                },
            },
            "args": _args(
                "Extra engine arguments, appended after Block's.", "engine.args", flags.ENGINE
            ),
            "env": {
                "type": "array",
                "description": "Extra environment variables of the engine container.",
                "default": [],
                "maxItems": 64,
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": _string("Variable name.", minLength=1, maxLength=256),
                        "value": _string("Variable value.", default=""),
                    },
                },
            },
            "resources": _resources("Engine container resources (GPUs are added for vllm)."),
            "nodeSelector": {
                "type": "object",
                "description": "Node labels the engine pods must match.",
                "default": {},
                "additionalProperties": {"type": "string"},
            },
            "tolerations": {
                "type": "array",
                "description": "Tolerations of the engine pods, as in a Pod spec.",
                "default": [],
                "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
        },
        "x-kubernetes-validations": [
            {
                "rule": "self.kind != 'vllm' || has(self.image)",
                "message": "engine.image is required when engine.kind is vllm "
                "(for example vllm/vllm-openai:<version>)",
            }
        ],
    }
    return {
        "type": "object",
        "description": "A model served by engine replicas, each with a predictor sidecar, "
        "behind a gateway that routes by predicted latency.",
        "required": ["model", "engine"],
        "properties": {
            "model": _string(
                "Model to serve (Hugging Face name), e.g. meta-llama/Meta-Llama-3-8B; one of "
                "Block's profiles unless predictor.image (and engine.image for the twin) name "
                "images of your own.",
                maxLength=256,
                **{
                    "x-kubernetes-validations": [
                        {
                            "rule": "size(self) > 0",
                            "message": "model must name the model to serve, "
                            "e.g. meta-llama/Llama-3.1-8B-Instruct",
                        }
                    ]
                },
            ),
            "engine": engine,
            "predictor": {
                "type": "object",
                "description": "The predictor sidecar beside each engine.",
                "default": {},
                "properties": {
                    "image": _image("Predictor image (default: the operator's Block image)."),
                    "args": _args("Extra predictor arguments.", "predictor.args", flags.PREDICTOR),
                    "resources": _resources("Predictor container resources."),
                },
            },
            "scheduler": {
                "type": "object",
                "description": "The routing of requests across replicas: the standalone gateway "
                "(block gateway: Envoy and Block's endpoint picker) and, where the cluster has "
                "the InferencePool API, the endpoint picker a Gateway API implementation asks "
                "(block epp), both with these settings.",
                "default": {},
                "properties": {
                    "policy": {
                        "type": "string",
                        "description": f"Routing policy: one of {policies} (K from 1 to 999; "
                        "power-of-k and block-k take --k from args).",
                        "default": "block",
                        "maxLength": 64,
                        "x-kubernetes-validations": [
                            {
                                "rule": f"self in [{policy_list}] || "
                                f"self.matches('{specs.POLICY_PATTERN}')",
                                "message": f"scheduler.policy must be one of: {policies}",
                            }
                        ],
                    },
                    "replicas": _integer("Gateway (and endpoint-picker) replicas.", 1, 1, 100),
                    "image": _image("Gateway image (default: the operator's Block image)."),
                    "args": _args(
                        "Extra block gateway arguments; the endpoint picker gets those "
                        "block epp takes too (not the Envoy ones).",
                        "scheduler.args",
                        flags.SCHEDULER,
                    ),
                    "resources": _resources("Gateway (and endpoint-picker) container resources."),
                    "apiKeys": {
                        "type": "object",
                        "description": "Inference API keys clients must present (Bearer or "
                        "x-api-key): a Secret in this namespace, one key per line under `key`, "
                        "mounted into the gateway and the endpoint picker (--api-keys-file). "
                        "Absent: no keys asked.",
                        "required": ["secretName"],
                        "properties": {
                            "secretName": _string(
                                "Name of the Secret.",
                                minLength=1,
                                maxLength=253,
                                pattern=specs.DNS_SUBDOMAIN,
                            ),
                            "key": _string(
                                "Key of the Secret holding the keys file.",
                                default="keys",
                                minLength=1,
                                maxLength=253,
                                pattern=specs.SECRET_KEY,
                            ),
                        },
                    },
                },
            },
            "replicas": _integer(
                "Engine replicas now (kubectl scale and the autoscaler set it).", 1, 0, 1000
            ),
            "minReplicas": _integer("Fewest engine replicas.", 1, 0, 1000),
            "maxReplicas": _integer("Most engine replicas.", 8, 1, 1000),
            "slo": {
                "type": "object",
                "description": "Latency objectives for routing and autoscaling.",
                "default": {},
                "properties": {
                    "ttftSeconds": _positive_seconds("Time-to-first-token objective (p99), s."),
                    "e2eSeconds": _positive_seconds("End-to-end latency objective (p99), s."),
                },
            },
            "networkPolicy": {
                "type": "object",
                "description": "NetworkPolicies: the sidecars (the engines' one open port) admit "
                "this cluster's gateway and endpoint picker and the ingressFrom peers only; the "
                "gateway and the picker admit anyone on their ports. Disabled, the policies "
                "admit everything.",
                "default": {},
                "properties": {
                    "enabled": {"type": "boolean", "default": True},
                    "ingressFrom": {
                        "type": "array",
                        "description": "More NetworkPolicyPeers (podSelector, namespaceSelector, "
                        "ipBlock) that may reach the sidecars: a Gateway API implementation's "
                        "proxies for the InferencePool front door, Prometheus.",
                        "default": [],
                        "maxItems": 32,
                        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    },
                },
            },
            "autoscaling": {
                "type": "object",
                "description": "Auto-provisioning from predicted load.",
                "default": {},
                "properties": {
                    "enabled": {"type": "boolean", "default": False},
                    "windowSeconds": _integer("Look-ahead window, s.", 300, 10, 86400),
                    "cooldownSeconds": _integer("Wait before scaling down, s.", 600, 0, 86400),
                },
            },
        },
        "x-kubernetes-validations": [
            # Static messages: a messageExpression that formats the numbers costs more than the
            # apiserver's CEL budget allows (string building is costed at the request size).
            {
                "rule": "self.minReplicas <= self.maxReplicas",
                "message": "minReplicas must not exceed maxReplicas",
                "reason": "FieldValueInvalid",
                "fieldPath": ".minReplicas",
            },
            {
                "rule": "self.replicas >= self.minReplicas && self.replicas <= self.maxReplicas",
                "message": "replicas must lie between minReplicas and maxReplicas "
                "(scale within them, or change them first)",
                "reason": "FieldValueInvalid",
                "fieldPath": ".replicas",
            },
            *catalogue.cel_rules(),
        ],
    }


def status_schema() -> RawSchema:
    condition = {
        "type": "object",
        "required": ["type", "status", "reason"],
        "properties": {
            "type": _string("Ready, Progressing or Degraded."),
            "status": _string("True, False or Unknown.", enum=["True", "False", "Unknown"]),
            "reason": _string("One CamelCase word."),
            "message": _string("What a person should know."),
            "observedGeneration": {"type": "integer", "format": "int64"},
            "lastTransitionTime": _string("When status last changed.", format="date-time"),
        },
    }
    count = {"type": "integer", "format": "int32"}
    return {
        "type": "object",
        "properties": {
            "observedGeneration": {"type": "integer", "format": "int64"},
            "replicas": {**count, "description": "Engine pods that exist."},
            "readyReplicas": {**count, "description": "Engine pods that are ready."},
            "updatedReplicas": {**count, "description": "Engine pods of the current spec."},
            "schedulerReadyReplicas": {**count, "description": "Gateway pods that are ready."},
            "eppReadyReplicas": {
                **count,
                "description": "Endpoint-picker pods (block epp) that are ready.",
            },
            "selector": _string("Label selector of the engine pods (scale subresource)."),
            "endpoint": _string("In-cluster URL of the standalone gateway."),
            "frontDoors": {
                "type": "array",
                "description": "Ways in: Gateway (the standalone gateway, Service "
                "NAME-scheduler), and InferencePool where the cluster serves the Gateway API "
                "Inference Extension's InferencePool API (route an HTTPRoute to it) and the "
                "NetworkPolicy lets a Gateway's proxies reach the sidecars (networkPolicy).",
                "items": {"type": "string", "enum": ["Gateway", "InferencePool"]},
                "x-kubernetes-list-type": "set",
            },
            "inferencePool": _string(
                "Name of the InferencePool (group inference.networking.k8s.io) an HTTPRoute's "
                "backendRef names; absent without the InferencePool API."
            ),
            "conditions": {
                "type": "array",
                "items": condition,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
            "autoscaling": autoscaling_status_schema(),
        },
    }


def autoscaling_status_schema() -> RawSchema:
    count = {"type": "integer", "format": "int32"}
    return {
        "type": "object",
        "description": "The autoscaler's last decision and the predictions behind it.",
        "required": [
            "lastDecisionTime",
            "currentReplicas",
            "recommendedReplicas",
            "targetReplicas",
            "forecastRps",
            "decision",
        ],
        "properties": {
            "lastDecisionTime": _string("When it decided.", format="date-time"),
            "currentReplicas": {**count, "description": "Replicas it found (starting included)."},
            "recommendedReplicas": {**count, "description": "Fewest predicted to meet the SLO."},
            "targetReplicas": {**count, "description": "After stabilisation and rate limits."},
            "forecastRps": {"type": "number", "description": "Forecast arrivals, req/s."},
            "decision": _string("What it did and why."),
            "predicted": {
                "type": "array",
                "description": "Predicted p99 at each replica count it simulated.",
                "items": {
                    "type": "object",
                    "required": ["replicas"],
                    "properties": {
                        "replicas": count,
                        "p99Seconds": {
                            "type": "number",
                            "description": "Absent: requests still waiting when the window ends.",
                        },
                    },
                },
            },
            "draining": _string("The engine pod drained before its removal."),
        },
    }


def printer_columns() -> list[dict[str, Any]]:
    ready = '.status.conditions[?(@.type=="Ready")].status'
    return [
        {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
        {"name": "Engine", "type": "string", "jsonPath": ".spec.engine.kind"},
        {"name": "Policy", "type": "string", "jsonPath": ".spec.scheduler.policy"},
        {"name": "Desired", "type": "integer", "jsonPath": ".spec.replicas"},
        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
        {"name": "Available", "type": "string", "jsonPath": ready},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition object, ready to apply."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{specs.PLURAL}.{specs.GROUP}",
            "labels": {"app.kubernetes.io/name": "block", "app.kubernetes.io/part-of": "block"},
        },
        "spec": {
            "group": specs.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": specs.KIND,
                "listKind": f"{specs.KIND}List",
                "plural": specs.PLURAL,
                "singular": specs.SINGULAR,
                "shortNames": list(specs.SHORT_NAMES),
                "categories": ["block"],
            },
            "versions": [
                {
                    "name": specs.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "BlockCluster: LLM serving routed by predicted latency.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": printer_columns(),
                }
            ],
        },
    }
