"""Issue 20, item 1: the admin token Secret, its mounts, the API keys, and the autoscaler's
credentials."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from block.operator import credentials, kube, provisioning
from block.operator.blockcluster import children, meta, secret_objects, specs
from block.wire.autoscaling import LoadReport

CLUSTER = meta.ClusterRef(name="demo", namespace="ns", uid="u-1")
SETTINGS = meta.RenderSettings(block_image="block:t")


def _spec(**patch: Any) -> specs.BlockClusterSpec:
    body = {"model": "llama-2-7b", "engine": {"kind": "twin", "gpu": "a100"}, **patch}
    return specs.BlockClusterSpec.model_validate(body)


def _containers(spec: specs.BlockClusterSpec) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Container name -> (container, pod spec) of the routing Deployments."""
    out = {}
    for obj in children.render(CLUSTER, spec, SETTINGS, inference_pool=True):
        if obj["kind"] == "Deployment":
            pod = obj["spec"]["template"]["spec"]
            for c in pod["containers"]:
                out[c["name"]] = (c, pod)
    return out


def test_admin_secret_holds_32_random_bytes_in_hex() -> None:
    token = secret_objects.new_admin_token()
    assert len(token) == 64 and int(token, 16) >= 0
    assert token != secret_objects.new_admin_token()
    secret = secret_objects.admin_secret(CLUSTER, token)
    assert secret["metadata"]["name"] == "demo-admin"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert base64.b64decode(secret["data"]["token"]).decode() == token
    assert secret_objects.admin_token(secret) == token
    assert secret_objects.admin_token({"data": {"token": "!!"}}) is None
    assert secret_objects.admin_token({}) is None


@pytest.mark.parametrize("api_keys", [False, True])
def test_gateway_and_picker_mount_the_token_and_the_keys_read_only(api_keys: bool) -> None:
    patch = {"scheduler": {"apiKeys": {"secretName": "team-keys", "key": "k.txt"}}}
    found = _containers(_spec(**patch) if api_keys else _spec())
    for name in ("scheduler", "epp"):
        container, pod = found[name]
        args = container["args"]
        assert args[args.index("--admin-token-file") + 1] == "/var/run/secrets/block/admin/token"
        volumes = {v["name"]: v for v in pod["volumes"]}
        admin = volumes["admin-token"]["secret"]
        assert admin["secretName"] == "demo-admin" and admin["defaultMode"] == 0o440
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["admin-token"]["readOnly"] is True
        assert "subPath" not in mounts["admin-token"]  # updates reach the file
        assert pod["securityContext"]["fsGroup"] == meta.BLOCK_UID
        if api_keys:
            assert args[args.index("--api-keys-file") + 1] == secret_objects.API_KEYS_FILE
            keys = volumes["api-keys"]["secret"]
            assert keys["secretName"] == "team-keys"
            assert keys["items"] == [{"key": "k.txt", "path": "keys"}]
            assert mounts["api-keys"]["mountPath"] + "/keys" == secret_objects.API_KEYS_FILE
        else:
            assert "--api-keys-file" not in args and "api-keys" not in volumes
    # The engine pods get no credentials at all.
    for name in ("engine", "predictor"):
        container, pod = found[name]
        assert not {"admin-token", "api-keys"} & {v["name"] for v in pod["volumes"]}
        assert "--admin-token-file" not in container["args"]


@pytest.mark.parametrize(
    "keys", [{"secretName": "Bad_Name"}, {"secretName": ""}, {"secretName": "k", "key": "a/b"}]
)
def test_api_keys_secret_names_are_validated(keys: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        _spec(scheduler={"apiKeys": keys})


class SecretKube:
    def __init__(self, token: str | None) -> None:
        self.token = token
        self.gets = 0

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
        assert (kind, namespace, name) == ("Secret", "ns", "demo-admin")
        self.gets += 1
        if self.token is None:
            return None
        return {"data": {"token": base64.b64encode(self.token.encode()).decode()}}


async def test_tokens_are_read_once_and_again_after_forget() -> None:
    source = SecretKube("t1")
    tokens = credentials.AdminTokens(source)  # type: ignore[arg-type]
    assert await tokens.get(CLUSTER) == "t1"
    assert await tokens.get(CLUSTER) == "t1"
    assert source.gets == 1
    source.token = "t2"
    tokens.forget(CLUSTER)
    assert await tokens.get(CLUSTER) == "t2"
    source.token = None
    tokens.forget(CLUSTER)
    assert await tokens.get(CLUSTER) is None


async def test_an_unreadable_secret_means_no_token_not_a_crash() -> None:
    class Broken:
        async def get(self, *args: Any) -> Any:
            raise kube.ApiError(403, "secrets is forbidden")

    assert await credentials.AdminTokens(Broken()).get(CLUSTER) is None  # type: ignore[arg-type]


async def test_autoscaler_sends_the_admin_token_and_rereads_it_when_refused(
    aiohttp_server: Any,
) -> None:
    seen: list[str | None] = []
    valid = {"token": "new"}

    async def load(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization")
        seen.append(auth)
        if auth != f"Bearer {valid['token']}":
            return web.json_response({"detail": "no"}, status=401)
        return web.json_response(LoadReport(interval_seconds=5.0, arrivals=0).model_dump())

    app = web.Application()
    app.router.add_get(provisioning.LOAD_PATH, load)
    server = await aiohttp_server(app)
    source = SecretKube("old")
    tokens = credentials.AdminTokens(source)  # type: ignore[arg-type]
    async with aiohttp.ClientSession() as session:
        advisor = provisioning.PredictiveAdvisor(
            session=session, pods=None, tokens=tokens,  # type: ignore[arg-type]
        )  # fmt: skip
        base = str(server.make_url("")).rstrip("/")
        await tokens.get(CLUSTER)  # cached: "old"
        source.token = "new"  # the Secret was replaced since
        report = await advisor._load(CLUSTER, base)
        assert report.arrivals == 0
        assert seen == ["Bearer old", "Bearer new"]
        valid["token"] = "other"  # a refusal that a fresh read does not cure is an error
        with pytest.raises(aiohttp.ClientResponseError) as caught:
            await advisor._load(CLUSTER, base)
        assert caught.value.status == 401


def test_the_operator_reads_tokens_through_its_kube_client() -> None:
    from block.operator import running
    from block.operator.settings import OperatorSettings

    service = running.autoscaler(OperatorSettings(), None, SecretKube("t"))  # type: ignore[arg-type]
    assert isinstance(service.tokens, credentials.AdminTokens)
    assert running.autoscaler(OperatorSettings(), None).tokens is None
