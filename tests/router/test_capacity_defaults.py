"""The router's defaults hold 5,000 concurrent streams (`sagesched bench overhead --streams 5000`
measures it end to end): each stream holds a pooled pod connection and two open files."""
from __future__ import annotations

import resource
import subprocess
import sys

from sagesched.router.proxy import Upstream
from sagesched.router.settings import RouterSettings

STREAMS = 5000


async def test_the_default_pod_connection_pool_holds_5000_streams():
    upstream = Upstream(RouterSettings())
    await upstream.start()
    try:
        assert upstream._pool is not None and upstream._pool.limit >= STREAMS
    finally:
        await upstream.stop()


def test_a_router_started_under_a_small_open_files_limit_raises_it_for_its_streams():
    # Many containers start processes with a soft limit of 1,024 open files: ~500 streams.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    code = ("import asyncio, resource\n"
            "from sagesched.router.proxy import Upstream\n"
            "from sagesched.router.settings import RouterSettings\n"
            "async def main():\n"
            "    upstream = Upstream(RouterSettings())\n"
            "    await upstream.start()\n"
            "    await upstream.stop()\n"
            "asyncio.run(main())\n"
            "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard)))
    assert done.returncode == 0, done.stderr
    wanted = 2 * RouterSettings().max_upstream_connections
    expected = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    assert int(done.stdout.split()[-1]) == max(1024, expected)
    assert expected >= 2 * STREAMS or hard < 2 * STREAMS  # only a hard limit below 10,000 can stop it
