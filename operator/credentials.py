"""The admin token of each BlockCluster, as the operator's own calls to its gateway need it.

The reconciler creates the Secret `NAME-admin` (`blockcluster.secret_objects`); the autoscaler
sends its token on `GET /v1/autoscaling/load` and `POST /v1/autoscaling/drain`. `AdminTokens`
reads the Secret through the API (the operator may `get` Secrets, not list or watch them) and
keeps the token per cluster uid until told it is stale (the gateway answered 401/403: the Secret
was replaced, so read it again).
"""

from __future__ import annotations

import dataclasses
import logging

from block.operator import kube as kube_
from block.operator.blockcluster import meta, secret_objects

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class AdminTokens:
    kube: kube_.Kube
    _tokens: dict[str, str] = dataclasses.field(default_factory=dict)

    async def get(self, cluster: meta.ClusterRef) -> str | None:
        """The cluster's admin token; None while its Secret does not exist (yet) or is empty."""
        token = self._tokens.get(cluster.uid)
        if token is not None:
            return token
        name = secret_objects.admin_secret_name(cluster)
        try:
            secret = await self.kube.get("v1", "Secret", cluster.namespace, name)
        except kube_.ApiError as e:
            # Calls go out without a token then, and the gateway's 403 says so again.
            logger.warning("cannot read Secret %s/%s: %s", cluster.namespace, name, e.detail)
            return None
        token = secret_objects.admin_token(secret) if secret is not None else None
        if token is not None:
            self._tokens[cluster.uid] = token
        return token

    def forget(self, cluster: meta.ClusterRef) -> None:
        """Read the Secret again next time (the gateway refused the token)."""
        self._tokens.pop(cluster.uid, None)


@dataclasses.dataclass(frozen=True)
class StaticTokens:
    """One token for every cluster (tests; a gateway outside the cluster)."""

    token: str | None

    async def get(self, cluster: meta.ClusterRef) -> str | None:
        return self.token

    def forget(self, cluster: meta.ClusterRef) -> None:
        pass
