"""`block gateway` with its picker on the compiled gRPC front, for bench/envoy_epp.py.

    python bench/_native_gateway.py SETTINGS_JSON

The same app, settings, Envoy bootstrap and process layout as `block gateway` (the picker in
this process on asyncio's own loop, Envoy its child with one worker); only the ext_proc server
differs: `block.scheduler.epp_native` (tonic, `block_epp_front`) instead of grpc.aio. Stops on
SIGINT/SIGTERM, or when Envoy exits.
"""

from __future__ import annotations

import asyncio
import json
import sys

from block import logs
from block.scheduler import (
    SchedulerSettings,
    create_app,
    envoy_config,
    envoy_gateway,
    epp_native,
    epp_serving,
)


async def main(settings: SchedulerSettings) -> int:
    app = create_app(settings)
    picker = await epp_native.start_native(
        app, "127.0.0.1", settings.grpc_port, settings.admin_port
    )
    try:
        layout = envoy_config.EnvoyLayout(
            listen_host=settings.host,
            listen_port=settings.port,
            admin_port=settings.envoy_admin_port,
            picker_host=picker.host,
            picker_grpc_port=picker.grpc_port,
            picker_admin_port=picker.admin_port,
            replicas=envoy_gateway.replica_addresses(settings),
        )
        policy = envoy_gateway.policy_for(settings, access_log=False)
        envoy = await envoy_gateway.EnvoyProcess.start(
            envoy_config.render(layout, policy), settings.envoy_concurrency
        )
    except BaseException:
        await picker.close()
        raise
    signalled = asyncio.ensure_future(epp_serving.wait_for_signal())
    exited = asyncio.ensure_future(envoy.proc.wait())
    await asyncio.wait({signalled, exited}, return_when=asyncio.FIRST_COMPLETED)
    signalled.cancel()
    await envoy.stop()
    await picker.close()
    return 1 if exited.done() else 0


if __name__ == "__main__":
    chosen = SchedulerSettings(**json.loads(sys.argv[1]))
    logs.setup(chosen.log_level, False)
    sys.exit(asyncio.run(main(chosen)))
