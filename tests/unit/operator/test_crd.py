"""The CRD's OpenAPI schema and the pydantic spec models describe the same object."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from pydantic_core import PydanticUndefined

from block.operator.blockcluster import crd_objects, specs

REPO = Path(__file__).resolve().parents[3]
CRD_COPIES = [
    REPO / "charts" / "block" / "crds" / "blockclusters.block.dev.yaml",
    REPO / "manifests" / "crds" / "blockclusters.block.dev.yaml",
]


def _model_of(annotation: Any) -> type[specs.CrdModel] | None:
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, specs.CrdModel):
            return candidate
    return None


def _walk(
    model: type[specs.CrdModel], schema: dict[str, Any], path: str, defaults: bool = True
) -> list[str]:
    """Differences between a model and its schema node: fields, required, defaults."""
    problems = []
    props = schema.get("properties", {})
    aliases = {f.alias or name: (name, f) for name, f in model.model_fields.items()}
    for alias in sorted(set(aliases) ^ set(props)):
        where = "model" if alias in aliases else "schema"
        problems.append(f"{path}.{alias}: only in the {where}")
    for alias, (_, field) in aliases.items():
        if alias not in props:
            continue
        node = props[alias]
        sub = _model_of(field.annotation)
        if sub is not None:
            inner = node["items"] if node.get("type") == "array" else node
            problems += _walk(sub, inner, f"{path}.{alias}", defaults)
        if field.is_required():
            if alias not in schema.get("required", []):
                problems.append(f"{path}.{alias}: required in the model, not in the schema")
            continue
        default = (
            field.default_factory()  # type: ignore[call-arg]
            if field.default_factory is not None
            else field.default
        )
        if default is PydanticUndefined or not defaults:
            continue
        if isinstance(default, pydantic.BaseModel):
            default = default.model_dump(by_alias=True, exclude_none=True)
        if default in (None, {}, []) and "default" not in node:
            continue  # absent and empty mean the same
        if default is None:
            if "default" in node:
                problems.append(f"{path}.{alias}: schema default {node['default']!r}, model None")
        elif node.get("default") != default and not (
            isinstance(default, dict) and node.get("default") == {}
        ):
            schema_default = node.get("default")
            problems.append(f"{path}.{alias}: schema default {schema_default!r} != {default!r}")
    return problems


def test_spec_model_and_schema_have_the_same_fields_and_defaults() -> None:
    schema = crd_objects.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(specs.BlockClusterSpec, schema["properties"]["spec"], "spec") == []
    # The status is written by the operator only: its model defaults need no schema defaults.
    status = schema["properties"]["status"]
    assert _walk(specs.BlockClusterStatus, status, "status", defaults=False) == []


def test_schema_defaults_give_the_model_defaults() -> None:
    """An object the apiserver defaulted from `{model: x}` parses to the model's defaults."""
    spec = specs.BlockClusterSpec.model_validate(
        {"model": "llama-2-7b", "engine": {"kind": "twin"}}
    ).model_dump(by_alias=True, exclude_none=True)
    assert spec["replicas"] == 1 and spec["minReplicas"] == 1 and spec["maxReplicas"] == 8
    assert spec["scheduler"]["policy"] == "block"


@pytest.mark.parametrize("path", CRD_COPIES, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_crd_copies_equal_the_rendered_crd(path: Path) -> None:
    assert yaml.safe_load(path.read_text()) == crd_objects.crd(), (
        f"{path} is stale: regenerate it with `block operator crd > {path.relative_to(REPO)}`"
    )


def test_scale_subresource_and_columns_point_at_real_fields() -> None:
    version = crd_objects.crd()["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]["properties"]
    scale = version["subresources"]["scale"]
    for key in ("specReplicasPath", "statusReplicasPath", "labelSelectorPath"):
        top, field = scale[key].lstrip(".").split(".")
        assert field in schema[top]["properties"], key
    for column in version["additionalPrinterColumns"]:
        top, *rest = column["jsonPath"].lstrip(".").split(".")
        if top == "metadata":
            continue
        assert rest[0].split("[")[0] in schema[top]["properties"], column


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"minReplicas": 5, "maxReplicas": 2, "replicas": 2}, "minReplicas must not exceed"),
        ({"replicas": 9}, "replicas must lie between"),
        ({"engine": {"kind": "vllm"}}, "engine.image is required"),
        ({"scheduler": {"policy": "fastest"}}, "scheduler.policy must be one of"),
    ],
)
def test_model_rejects_what_the_cel_rules_reject(patch: dict[str, Any], message: str) -> None:
    body = {"model": "llama-2-7b", "engine": {"kind": "twin"}, **patch}
    with pytest.raises(pydantic.ValidationError, match=message):
        specs.BlockClusterSpec.model_validate(body)


def test_model_rejects_non_positive_slo() -> None:
    with pytest.raises(pydantic.ValidationError, match="greater than 0"):
        specs.BlockClusterSpec.model_validate(
            {"model": "llama-2-7b", "engine": {"kind": "twin"}, "slo": {"ttftSeconds": 0}}
        )


def test_cel_policy_list_is_the_model_policy_list() -> None:
    spec = crd_objects.spec_schema()
    rule = spec["properties"]["scheduler"]["properties"]["policy"]["x-kubernetes-validations"][0]
    for policy in specs.POLICIES:
        assert f"'{policy}'" in rule["rule"]
