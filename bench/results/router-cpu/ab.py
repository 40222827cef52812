"""A/B: one instant-pods process, a 'before' and an 'after' router side by side; load alternates.
Per round and tree: router CPU per request (/proc), loadgen CPU, latency P50/P99, decision P50/P99."""
import argparse, json, os, subprocess, sys, tempfile, time, statistics
from pathlib import Path
sys.path.insert(0, "/work/main")
def _ut(pid):
    f = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split(); return int(f[11]) / os.sysconf('SC_CLK_TCK')
from sagesched.bench.loadgen import cpu_seconds, get, POD_SEQS, MODEL
from sagesched.bench.overhead import _histogram, _metrics, _quantile
from sagesched.router.proxy import raise_fd_limit
from sagesched.http_serve import free_port

TREES = {"before": "/tmp/beforepkg", "after": "/tmp/afterpkg"}

def router(tree, pod_urls, workdir, extra):
    from sagesched.engine.profile import load_profile
    profile = workdir / "p.json"
    profile.write_text(load_profile().with_overrides(name="instant-pod", max_num_seqs=POD_SEQS, num_gpu_blocks=10_000_000, provenance="x").to_json())
    cfg = {"backends": [{"url": u, "models": [MODEL], "profile": str(profile)} for u in pod_urls],
           "policy": "sagesched", "grpc_port": None, "snapshot_max_age_s": 3600, "scrape_interval_s": 0.5, **extra}
    (workdir / f"{tree}.yaml").write_text(json.dumps(cfg))
    port = free_port()
    env = dict(os.environ, PYTHONPATH=TREES[tree])
    p = subprocess.Popen([sys.executable, "-m", "sagesched.cli", "router", "--config", str(workdir / f"{tree}.yaml"),
                          "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"], env=env, cwd="/tmp")
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            get(url + "/ready", 1); break
        except OSError:
            time.sleep(0.1)
    return p, url

def drive(url, rate, count, tokens, seed):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "o.json"
        t0 = os.times()
        subprocess.run([sys.executable, "-m", "sagesched.bench.overhead", "--rate", str(rate), "--count", str(count),
                        "--tokens", str(tokens), "--seed", str(seed), "--out", str(out), "--url", url], check=True, cwd="/tmp")
        t1 = os.times()
        return json.loads(out.read_text()), (t1.children_user + t1.children_system - t0.children_user - t0.children_system)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=300); ap.add_argument("--count", type=int, default=1500)
    ap.add_argument("--tokens", type=int, default=16); ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--trees", default="before,after"); ap.add_argument("--pods", type=int, default=4)
    ap.add_argument("--extra", default="{}")
    a = ap.parse_args()
    raise_fd_limit(1 << 20)
    pods = subprocess.Popen([sys.executable, "-m", "sagesched.bench.instant_pod", "--pods", str(a.pods), "--model", MODEL,
                             "--tokens", str(a.tokens)], stdout=subprocess.PIPE, text=True, cwd="/tmp")
    pod_urls = json.loads(pods.stdout.readline())
    work = Path(tempfile.mkdtemp())
    trees = a.trees.split(",")
    routers = {t: router(t, pod_urls, work, json.loads(a.extra)) for t in trees}
    print("pids", {t: p.pid for t, (p, _) in routers.items()}, flush=True)
    res = {t: [] for t in trees}
    try:
        for t in trees:  # warm-up
            drive(routers[t][1], a.rate, 200, a.tokens, 99)
        for r in range(a.rounds):
            for t in (trees if r % 2 == 0 else trees[::-1]):
                p, url = routers[t]
                before = _histogram(_metrics(url), "sagesched_decision_seconds")[1]
                c0 = cpu_seconds(p.pid); u0 = _ut(p.pid)
                load, gen_cpu = drive(url, a.rate, a.count, a.tokens, r)
                cpu = (cpu_seconds(p.pid) - c0) / a.count * 1e3; usr = (_ut(p.pid) - u0) / a.count * 1e3
                b, after = _histogram(_metrics(url), "sagesched_decision_seconds")
                c = after - (before if before.size else 0)
                import numpy as np
                lat = np.array(load["latencies"]) * 1e3
                row = dict(cpu_ms=cpu, usr_ms=usr, gen_cpu_ms=gen_cpu / a.count * 1e3, p50=float(np.percentile(lat, 50)) if lat.size else float("nan"),
                           p99=float(np.percentile(lat, 99)) if lat.size else float("nan"), d50=_quantile(b, c, .5) * 1e3, d99=_quantile(b, c, .99) * 1e3,
                           err=load["errors"], lag99=load["lag_p99"] * 1e3)
                res[t].append(row)
                print(t, r, {k: round(v, 3) for k, v in row.items()}, flush=True)
        for t in trees:
            print(f"== {t}: " + ", ".join(f"{k} median {statistics.median([x[k] for x in res[t]]):.3f} [{min(x[k] for x in res[t]):.3f}-{max(x[k] for x in res[t]):.3f}]" for k in res[t][0]))
    finally:
        for p, _ in routers.values(): p.terminate()
        pods.terminate()
main()
