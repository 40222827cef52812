"""Stage 2, predict: the request's output-length distribution.

The predictor service is asked first, under a deadline; when it is absent, late or failing, the
scheduling core's history estimator answers instead (`sagesched_predictor_fallbacks_total` counts
why). A prediction never blocks a request for longer than the deadline.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from sagesched.router.metrics import RouterMetrics
from sagesched.router.request import LiveRequest


class PredictStage:
    def __init__(self, estimator: Any, metrics: RouterMetrics, client: Any | None = None,
                 deadline_s: float = 0.005) -> None:
        self.estimator = estimator
        self.client = client
        self.metrics = metrics
        self.deadline_s = deadline_s

    async def predict(self, req: LiveRequest) -> None:
        if self.client is not None:
            t0 = time.perf_counter()
            reason = ""
            try:
                # The client resolves by its own deadline; this bound only guards against a client bug.
                prediction = await asyncio.wait_for(self._ask_client(req), 2 * self.deadline_s + 0.005)
                req.distribution, req.prediction_source = prediction.distribution, prediction.source
                if prediction.source == "fallback":
                    reason = "client_fallback"
            except asyncio.TimeoutError:
                reason = "deadline"
            except Exception:  # the predictor is an optimisation: any failure falls back
                reason = "error"
            self.metrics.predictor_latency.observe(time.perf_counter() - t0)
            if reason:
                self.metrics.predictor_fallbacks.labels(reason).inc()
        if req.distribution is None:
            req.distribution = self.estimator.predict(req.model, req.prompt_tokens)
            req.prediction_source = "history"
        self.metrics.predicted_tokens.labels(req.model).observe(req.distribution.mean)

    async def _ask_client(self, req: LiveRequest):
        from sagesched.predictor.types import PredictQuery

        query = PredictQuery(model=req.model, prompt=req.prompt_text, prompt_tokens=req.prompt_tokens,
                             max_tokens=req.max_tokens or 0, temperature=req.body.get("temperature"),
                             request_id=req.id)
        return await self.client.predict(query)

    def observe(self, model: str, prompt_tokens: int, output_tokens: int) -> None:
        """Teach the history estimator one finished request."""
        self.estimator.observe(model, prompt_tokens, output_tokens)
