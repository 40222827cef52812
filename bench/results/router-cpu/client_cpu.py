"""CPU per streamed request of the router's pod client alone: aiohttp's (as `Upstream` used it before
router/upstream_http.py: pooled session, per-request timeouts, `iter_any`) against `PodPool`, 8 requests
at a time to one instant pod (its own process, 16-token answers); process CPU of this side only."""
import asyncio, json, subprocess, sys, time
import aiohttp, uvloop
from sagesched.router.upstream_http import PodPool

BODY = {"model": "m", "prompt": "hi", "max_tokens": 16, "stream": True, "stream_options": {"include_usage": True}}
HDRS = {"X-Request-Id": "abc"}

async def run_aiohttp(url, n, conc):
    s = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000), auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
                              timeout=aiohttp.ClientTimeout(total=900))
    st = aiohttp.ClientTimeout(total=900, sock_connect=5, sock_read=60)
    async def one():
        async with asyncio.timeout(60):
            r = await s.post(url + "/v1/completions", headers=HDRS, json=BODY, timeout=st)
        try:
            async for c in r.content.iter_any(): pass
        finally: r.release()
    await go(one, n, conc); await s.close()

async def run_pool(url, n, conc):
    p = PodPool(1000, 5)
    async def one():
        r = await p.post(url, "/v1/completions", HDRS, BODY, first_byte_s=60, idle_s=60, total_s=900)
        try:
            async for c in r.chunks(): pass
        finally: r.release()
    await go(one, n, conc); await p.close()

async def go(one, n, conc):
    sem = asyncio.Semaphore(conc)
    async def lim():
        async with sem: await one()
    await asyncio.gather(*(lim() for _ in range(200)))
    t0 = time.process_time()
    await asyncio.gather(*(lim() for _ in range(n)))
    print(f"  {(time.process_time() - t0) / n * 1e3:.3f} ms CPU/request")

pods = subprocess.Popen([sys.executable, "-m", "sagesched.bench.instant_pod", "--pods", "1", "--model", "m", "--tokens", "16"], stdout=subprocess.PIPE, text=True, cwd="/tmp")
url = json.loads(pods.stdout.readline())[0]
try:
    for rnd in range(3):
        for name, fn in (("aiohttp", run_aiohttp), ("PodPool", run_pool)):
            print(name, end="")
            uvloop.run(fn(url, 3000, 8))
finally:
    pods.terminate()
