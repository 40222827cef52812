import json, subprocess, sys, tempfile, time, argparse
from pathlib import Path
sys.path.insert(0, "/tmp/perf")
import importlib.util
spec = importlib.util.spec_from_file_location("ab", "/tmp/perf/ab.py"); src = open("/tmp/perf/ab.py").read().replace("\nmain()\n", "\n")
ab = type(sys)("ab"); exec(compile(src, "ab.py", "exec"), ab.__dict__)
from sagesched.bench.loadgen import MODEL
from sagesched.bench.overhead import _streams, _Stack
from sagesched.router.proxy import raise_fd_limit
ap = argparse.ArgumentParser(); ap.add_argument("--tree", default="before"); ap.add_argument("--streams", type=int, default=5000)
ap.add_argument("--extra", default="{}"); ap.add_argument("--nofile", type=int, default=0)
a = ap.parse_args()
raise_fd_limit(1 << 20)
if a.nofile:
    import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (a.nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
pods = subprocess.Popen([sys.executable, "-m", "sagesched.bench.instant_pod", "--pods", "4", "--model", MODEL, "--tokens", "8", "--interval", "2"], stdout=subprocess.PIPE, text=True, cwd="/tmp")
urls = json.loads(pods.stdout.readline())
p, url = ab.router(a.tree, urls, Path(tempfile.mkdtemp()), json.loads(a.extra))
try:
    _streams(argparse.Namespace(streams=a.streams, stream_rate=1000.0, stream_tokens=8, stream_interval=2.0), _Stack(url, p.pid, urls))
finally:
    p.terminate(); pods.terminate()
