"""Semantic-history windows shared by every predictor replica, through Redis streams.

Why Redis and not fanning reports out to every replica: routers report each completion to one
replica (the Service balances), and a fan-out would need every router to know every replica and
retry the ones that are restarting. Redis is already the project's shared state (sagesched.state);
one stream per model, trimmed to about the window size, is both the fan-out and the history a new
or restarted replica starts from.

Each entry carries the prompt's vector (not its text: replicas do not pay the embedding again), the
output length, the prompt tokens, the embedder's name (a replica with another embedder skips the
entry: its vectors live in another space) and the writing replica's id (a replica has already
applied its own reports, at once, and skips them on the way back).

Nothing here is on the prediction path. Publishing is best-effort with bounded socket waits (a
stalled Redis costs a report at most `timeout_s`, and is counted); the reader thread retries with a
pause, and predictions go on from the windows the replica already has.
"""
from __future__ import annotations

import logging
import threading
import uuid

import numpy as np

from sagesched.predictor.semantic import SemanticHistory

log = logging.getLogger(__name__)

READ_COUNT = 1000  # entries per XREAD: bounds one lock hold when a replica catches up


class RedisWindowFeed:
    def __init__(self, url: str, history: SemanticHistory, prefix: str = "sagesched:predictor:window:",
                 timeout_s: float = 1.0, block_s: float = 0.5) -> None:
        import redis

        self.history = history
        self.prefix = prefix
        self.models_key = prefix.rstrip(":") + "-models"
        self.replica = uuid.uuid4().hex
        self.block_ms = int(block_s * 1000)
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s + block_s,
                                           socket_connect_timeout=timeout_s)
        self._cursors: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="predictor-window-feed", daemon=True)
        self.published = 0
        self.publish_errors = 0
        self.applied = 0

    def start(self) -> "RedisWindowFeed":
        self.history.feed = self
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.history.feed = None
        self._redis.close()

    def publish(self, model: str, vectors: np.ndarray, lengths: np.ndarray, prompt_tokens: np.ndarray) -> None:
        import redis

        pipe = self._redis.pipeline(transaction=False)
        pipe.sadd(self.models_key, model)
        name = self.history.embedder.name
        for v, n, p in zip(vectors, lengths, prompt_tokens):
            pipe.xadd(self.prefix + model, {"v": v.astype(np.float32).tobytes(), "n": int(n), "p": int(p),
                                            "e": name, "r": self.replica},
                      maxlen=self.history.params.window, approximate=True)
        try:
            pipe.execute()
            self.published += len(lengths)
        except redis.RedisError as exc:
            self.publish_errors += 1
            log.warning("could not share %d completions through Redis: %s", len(lengths), exc)

    def _run(self) -> None:
        import redis

        while not self._stop.is_set():
            try:
                self.poll()
            except redis.RedisError as exc:
                log.warning("window feed: %s; retrying", exc)
                self._stop.wait(1.0)

    def poll(self) -> int:
        """Apply other replicas' new entries (every entry still in a stream, for a model first seen);
        returns how many were applied. Blocks up to block_s when there is nothing new."""
        for raw in self._redis.smembers(self.models_key):
            self._cursors.setdefault(self.prefix + raw.decode(), "0-0")
        if not self._cursors:
            self._stop.wait(self.block_ms / 1000)
            return 0
        applied = 0
        for stream, entries in self._redis.xread(self._cursors, count=READ_COUNT, block=self.block_ms) or []:
            stream = stream.decode()
            self._cursors[stream] = entries[-1][0].decode()
            applied += self._apply(stream[len(self.prefix):], [fields for _, fields in entries])
        self.applied += applied
        return applied

    def _apply(self, model: str, entries: list[dict]) -> int:
        name = self.history.embedder.name.encode()
        mine = self.replica.encode()
        kept = [f for f in entries if f[b"e"] == name and f[b"r"] != mine]
        if not kept:
            return 0
        vectors = np.stack([np.frombuffer(f[b"v"], dtype=np.float32) for f in kept])
        self.history.add(model, vectors, np.array([int(f[b"n"]) for f in kept]),
                         np.array([int(f[b"p"]) for f in kept]))
        return len(kept)
