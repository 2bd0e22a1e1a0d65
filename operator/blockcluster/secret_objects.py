"""Credentials of the routing components: the admin token and the inference API keys (pure).

- **Admin token.** The gateway's and the picker's admin endpoints (`/v1/autoscaling/load`,
  `/v1/autoscaling/drain`, and `/v1/replicas` where API keys are set) answer only
  `Authorization: Bearer <token>` with the token of `--admin-token-file`. The operator makes
  one per BlockCluster, a Secret `NAME-admin` (key `token`: 32 random bytes, hex), once: it is
  created when absent and never applied over, so reconciles do not rotate it (delete the
  Secret to rotate it; the next reconcile makes a new one, and the kubelet refreshes the
  mounted file). The operator reads it back through the API for its own calls.
- **API keys** (optional, `spec.scheduler.apiKeys`): a Secret of the user's, one key per line
  under `key`, mounted for `--api-keys-file`.

Both are volumes (no subPath, so updates reach the file), read-only, readable by the pod's
group only (`fsGroup`, mode 0440): the pods need no RBAC for them.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

from block.operator.blockcluster import meta, specs

ADMIN_PART = "admin"
ADMIN_TOKEN_KEY = "token"
ADMIN_TOKEN_BYTES = 32
ADMIN_VOLUME = "admin-token"
ADMIN_DIR = "/var/run/secrets/block/admin"
ADMIN_TOKEN_FILE = f"{ADMIN_DIR}/{ADMIN_TOKEN_KEY}"
API_KEYS_VOLUME = "api-keys"
API_KEYS_DIR = "/var/run/secrets/block/api-keys"
API_KEYS_FILE = f"{API_KEYS_DIR}/keys"
SECRET_FILE_MODE = 0o440


def admin_secret_name(cluster: meta.ClusterRef) -> str:
    return meta.child_name(cluster, ADMIN_PART)


def new_admin_token() -> str:
    return secrets.token_hex(ADMIN_TOKEN_BYTES)


def admin_secret(cluster: meta.ClusterRef, token: str) -> dict[str, Any]:
    """The Secret to create (once) for `cluster`, holding `token`."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta.metadata(cluster, ADMIN_PART, ADMIN_PART),
        "type": "Opaque",
        "data": {ADMIN_TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def admin_token(secret: dict[str, Any]) -> str | None:
    """The token a Secret read from the API holds, or None if it holds none."""
    raw = (secret.get("data") or {}).get(ADMIN_TOKEN_KEY)
    if not raw:
        return None
    try:
        token = base64.b64decode(raw, validate=True).decode().strip()
    except (ValueError, UnicodeDecodeError):
        return None
    return token or None


def volumes(cluster: meta.ClusterRef, spec: specs.BlockClusterSpec) -> list[dict[str, Any]]:
    """The pod volumes of a routing component (gateway or picker)."""
    out = [
        {
            "name": ADMIN_VOLUME,
            "secret": {
                "secretName": admin_secret_name(cluster),
                "defaultMode": SECRET_FILE_MODE,
                "items": [{"key": ADMIN_TOKEN_KEY, "path": ADMIN_TOKEN_KEY}],
            },
        }
    ]
    keys = spec.scheduler.api_keys
    if keys is not None:
        out.append(
            {
                "name": API_KEYS_VOLUME,
                "secret": {
                    "secretName": keys.secret_name,
                    "defaultMode": SECRET_FILE_MODE,
                    # A missing Secret or key keeps the pod from starting: no open gateway.
                    "items": [{"key": keys.key, "path": "keys"}],
                },
            }
        )
    return out


def volume_mounts(spec: specs.BlockClusterSpec) -> list[dict[str, Any]]:
    out = [{"name": ADMIN_VOLUME, "mountPath": ADMIN_DIR, "readOnly": True}]
    if spec.scheduler.api_keys is not None:
        out.append({"name": API_KEYS_VOLUME, "mountPath": API_KEYS_DIR, "readOnly": True})
    return out


def argv(spec: specs.BlockClusterSpec) -> list[str]:
    """The routing component's credential flags."""
    out = ["--admin-token-file", ADMIN_TOKEN_FILE]
    if spec.scheduler.api_keys is not None:
        out += ["--api-keys-file", API_KEYS_FILE]
    return out


def pod_security_context() -> dict[str, Any]:
    """The secret files' group (mode 0440) is the pod's: Block's user may read them."""
    return {"fsGroup": meta.BLOCK_UID}
