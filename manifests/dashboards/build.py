"""Writes the Grafana dashboards in this folder: `python manifests/dashboards/build.py [OUT_DIR]`.

Edit panels here, run it, then `python manifests/install/generate.py` to copy them into the chart.
tests/deploy checks the JSON files equal this script's output and runs every query on real Prometheus.
"""
import json, sys
from pathlib import Path

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"

def target(expr, legend, ref):
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}

class Board:
    def __init__(self, uid, title, desc, variables):
        self.uid, self.title, self.desc, self.vars = uid, title, desc, variables
        self.panels, self.y, self.id = [], 0, 1
    def row(self, title):
        if getattr(self, "x", 0) > 0:  # a half-filled line of panels: the row starts below it
            self.y += self.h
        self.panels.append({"type": "row", "title": title, "id": self.id, "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.id += 1; self.y += 1; self.x = 0
    def panel(self, title, desc, targets, unit="short", w=12, h=8, kind="timeseries", stack=False, minv=None, maxv=None):
        if getattr(self, "x", 0) + w > 24:
            self.x = 0; self.y += h
        defaults = {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 10 if not stack else 30,
                                              "showPoints": "never",
                                              "stacking": {"mode": "normal" if stack else "none", "group": "A"}}}
        if kind == "stat":
            defaults = {"unit": unit}
        if minv is not None: defaults["min"] = minv
        if maxv is not None: defaults["max"] = maxv
        p = {"type": kind, "title": title, "description": desc, "id": self.id, "datasource": DS,
             "gridPos": {"h": h, "w": w, "x": getattr(self, "x", 0), "y": self.y},
             "fieldConfig": {"defaults": defaults, "overrides": []},
             "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                         "tooltip": {"mode": "multi", "sort": "desc"}} if kind == "timeseries" else
                        {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                         "colorMode": "value", "graphMode": "area", "textMode": "auto"},
             "targets": [target(e, l, chr(65 + i)) for i, (e, l) in enumerate(targets)]}
        self.panels.append(p); self.id += 1; self.h = h
        self.x = getattr(self, "x", 0) + w
        if self.x >= 24: self.x = 0; self.y += h
    def dump(self, name):
        templating = [{"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
                       "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []}]
        for name_, label, query in self.vars:
            templating.append({"name": name_, "label": label, "type": "query", "datasource": DS,
                               "query": {"query": query, "refId": "vars"}, "definition": query,
                               "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
                               "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                               "sort": 1, "hide": 0, "options": [], "regex": ""})
        board = {"uid": self.uid, "title": self.title, "description": self.desc,
                 "tags": ["sagesched", "llm-inference"], "timezone": "browser", "editable": True,
                 "graphTooltip": 1, "schemaVersion": 39, "version": 1, "refresh": "30s",
                 "time": {"from": "now-1h", "to": "now"}, "fiscalYearStartMonth": 0, "liveNow": False,
                 "annotations": {"list": []}, "links": [
                     {"title": "SageSched", "type": "dashboards", "tags": ["sagesched"], "asDropdown": True,
                      "includeVars": False, "keepTime": True}],
                 "templating": {"list": templating}, "panels": self.panels}
        (OUT / name).write_text(json.dumps(board, indent=2) + "\n")

M = 'model=~"$model"'
P = 'policy=~"$policy"'

# --- router ----------------------------------------------------------------------------------
b = Board("sagesched-router", "SageSched / Router",
          "Requests, latency, queueing and dispatch as the SageSched router sees them (sagesched_* metrics).",
          [("model", "Model", "label_values(sagesched_requests_total, model)"),
           ("policy", "Policy", "label_values(sagesched_queue_depth, policy)")])
b.row("Traffic and errors")
b.panel("Request rate by status code", "Requests answered per second, by model and HTTP status.",
        [(f'sum by (model, code) (rate(sagesched_requests_total{{{M}}}[{RI}]))', "{{model}} {{code}}")], "reqps", stack=True)
b.panel("Error ratio", "Share of answered requests with a 4xx/5xx status, per model.",
        [(f'sum by (model) (rate(sagesched_requests_total{{{M}, code=~"[45].."}}[{RI}])) / sum by (model) (rate(sagesched_requests_total{{{M}}}[{RI}]))', "{{model}}")],
        "percentunit", minv=0)
b.panel("Errors by kind", "Router errors per second, by kind (the router metric's help lists them: bad_request, queue_full, upstream, client_timeout, ...).",
        [(f'sum by (kind) (rate(sagesched_errors_total[{RI}]))', "{{kind}}")], "ops", w=24, stack=True)
b.row("Latency per policy")
for metric, title in (("sagesched_ttft_seconds", "Time to first token"), ("sagesched_ttlt_seconds", "Time to last token")):
    b.panel(f"{title} (p50 / p90 / p99) per policy", f"{title} as the client sees it through the router.",
            [(f'histogram_quantile({q}, sum by (policy, le) (rate({metric}_bucket{{{M}, {P}}}[{RI}])))', f"p{int(q*100)} {{{{policy}}}}")
             for q in (0.5, 0.9, 0.99)], "s")
b.panel("Mean TTLT per policy", "Mean end-to-end latency, the quantity the policy minimises.",
        [(f'sum by (policy) (rate(sagesched_ttlt_seconds_sum{{{M}, {P}}}[{RI}])) / sum by (policy) (rate(sagesched_ttlt_seconds_count{{{M}, {P}}}[{RI}]))', "{{policy}}")], "s", w=24)
b.row("Queue")
b.panel("Queue depth", "Requests waiting in the admission queue, per model and policy (summed over router replicas).",
        [(f'sum by (model, policy) (sagesched_queue_depth{{{M}, {P}}})', "{{model}} {{policy}}")], "short", minv=0)
b.panel("Queue wait (p50 / p99)", "Time from arrival until the policy dispatched the request.",
        [(f'histogram_quantile({q}, sum by (policy, le) (rate(sagesched_queue_wait_seconds_bucket{{{M}, {P}}}[{RI}])))', f"p{int(q*100)} {{{{policy}}}}")
         for q in (0.5, 0.99)], "s")
b.row("Dispatch")
b.panel("Dispatches per pod", "Requests sent to each engine pod per second.",
        [(f'sum by (pod) (rate(sagesched_dispatches_total{{{P}}}[{RI}]))', "{{pod}}")], "reqps", stack=True)
b.panel("In-flight requests per pod", "Requests this router fleet has in flight on each pod.",
        [('sum by (pod) (sagesched_inflight_requests)', "{{pod}}")], "short", minv=0)
b.panel("Dispatch decision time (p99)", "Duration of one scheduler dispatch pass.",
        [(f'histogram_quantile(0.99, sum by (policy, le) (rate(sagesched_dispatch_decision_seconds_bucket{{{P}}}[{RI}])))', "{{policy}}")], "s")
b.panel("Scheduler plugin time per pass (mean)", "Time each scheduling plugin (filter, gate, scorer, picker) takes per pass over the pods.",
        [(f'sum by (kind, name) (rate(sagesched_plugin_seconds_sum[{RI}])) / sum by (kind, name) (rate(sagesched_plugin_seconds_count[{RI}]))', "{{kind}} {{name}}")], "s")
b.panel("Pod snapshot age", "Age of the newest metrics snapshot of each pod; beyond the router's snapshot_max_age_s a pod gets no new work.",
        [('max by (pod) (sagesched_pod_snapshot_age_seconds)', "{{pod}}")], "s", minv=0)
b.row("Live preemption")
b.panel("Preemptions per pod", "Streams the router stopped on each pod to serve a more urgent waiting request (resumed later as continuations).",
        [('sum by (pod, reason) (rate(sagesched_preemptions_total[%s]))' % RI, "{{pod}} {{reason}}")], "ops", minv=0)
b.panel("Resumes: same pod vs elsewhere", "Preempted streams resumed; on the same pod the engine's prefix cache may still hold their KV.",
        [('sum by (same_pod) (rate(sagesched_resumes_total[%s]))' % RI, "same pod {{same_pod}}")], "ops", stack=True, minv=0)
b.panel("Tokens sent again for prefill", "Prompt and generated tokens of resumed streams sent to a pod again; the engine dashboard's prefix-cache hit rate shows how much it did not recompute.",
        [('sum(rate(sagesched_recomputed_tokens_total[%s]))' % RI, "tokens/s")], "short", minv=0)
b.panel("Requests never preempted, by reason", "Requests a continuation could not reproduce (unary, logprobs, tools, structured output, ...) or whose client opted out.",
        [('sum by (reason) (rate(sagesched_unpreemptible_requests_total[%s]))' % RI, "{{reason}}")], "reqps", stack=True, minv=0)
b.row("Operator")
b.panel("Pods tracked per policy", "Pods each SageSchedPolicy selects and the operator scrapes into the snapshot store.",
        [('sum by (namespace, policy) (sagesched_operator_pods_tracked)', "{{namespace}}/{{policy}}")], "short", minv=0)
b.panel("Pod scrape time (p99) and snapshots published", "How long one pod's /metrics takes to fetch and parse, and snapshots written per second.",
        [(f'histogram_quantile(0.99, sum by (le) (rate(sagesched_operator_scrape_duration_seconds_bucket[{RI}])))', "scrape p99 (s)"),
         (f'sum(rate(sagesched_operator_snapshots_published_total[{RI}]))', "snapshots/s")], "short", minv=0)
b.panel("Scrape errors by reason", "Failed pod scrapes per second (timeout, connect, http_status, parse): a pod's snapshot goes stale.",
        [(f'sum by (reason) (rate(sagesched_operator_scrape_errors_total[{RI}])) or vector(0)', "{{reason}}")], "ops", minv=0)
b.panel("Policy conditions", "1 while a SageSchedPolicy's condition (Ready, Degraded, InvalidSpec) is true.",
        [('max by (namespace, policy, condition) (sagesched_operator_policy_condition)', "{{namespace}}/{{policy}} {{condition}}")],
        "short", minv=0, maxv=1)
b.dump("sagesched-router.json")

# --- engines ---------------------------------------------------------------------------------
EM = 'model_name=~"$model"'
b = Board("sagesched-engines", "SageSched / Engine pods",
          "Per-pod state from the engines' own vLLM metrics (vllm:*), scraped from the pods.",
          [("model", "Model", "label_values(vllm:num_requests_running, model_name)")])
b.row("Memory and load")
b.panel("KV-cache usage per pod", "Fraction of KV-cache blocks in use (vllm:kv_cache_usage_perc, 0..1).",
        [(f'max by (instance) (vllm:kv_cache_usage_perc{{{EM}}})', "{{instance}}")], "percentunit", minv=0, maxv=1)
b.panel("Preemptions per pod", "Engine preemptions per second: each one recomputes a whole prompt.",
        [(f'sum by (instance) (rate(vllm:num_preemptions_total{{{EM}}}[{RI}]))', "{{instance}}")], "ops", minv=0)
b.panel("Running requests per pod", "Requests in the engine's running batch.",
        [(f'sum by (instance) (vllm:num_requests_running{{{EM}}})', "{{instance}}")], "short", minv=0)
b.panel("Waiting requests per pod", "Requests queued inside the engine (SageSched aims to keep this near zero).",
        [(f'sum by (instance) (vllm:num_requests_waiting{{{EM}}})', "{{instance}}")], "short", minv=0)
b.row("Throughput and engine latency")
b.panel("Generated tokens per second", "Decode throughput per pod.",
        [(f'sum by (instance) (rate(vllm:generation_tokens_total{{{EM}}}[{RI}]))', "{{instance}}")], "short", stack=True)
b.panel("Prompt tokens per second", "Prefill throughput per pod.",
        [(f'sum by (instance) (rate(vllm:prompt_tokens_total{{{EM}}}[{RI}]))', "{{instance}}")], "short", stack=True)
b.panel("Engine TTFT p90 per pod", "Time to first token inside the engine (excludes the router's queue).",
        [(f'histogram_quantile(0.9, sum by (instance, le) (rate(vllm:time_to_first_token_seconds_bucket{{{EM}}}[{RI}])))', "{{instance}}")], "s")
b.panel("Engine queue time p90 per pod", "Time requests spent waiting inside the engine.",
        [(f'histogram_quantile(0.9, sum by (instance, le) (rate(vllm:request_queue_time_seconds_bucket{{{EM}}}[{RI}])))', "{{instance}}")], "s")
b.panel("Prefix-cache hit rate per pod", "Share of prompt tokens the engine found in its prefix cache (vllm:prefix_cache_hits / queries): resumed streams' earlier work, repeated prompts.",
        [(f'sum by (instance) (rate(vllm:prefix_cache_hits_total{{{EM}}}[{RI}])) / sum by (instance) (rate(vllm:prefix_cache_queries_total{{{EM}}}[{RI}]))', "{{instance}}")],
        "percentunit", minv=0, maxv=1)
b.dump("sagesched-engines.json")

# --- predictor -------------------------------------------------------------------------------
b = Board("sagesched-predictor", "SageSched / Output-length predictor",
          "Predicted vs actual output lengths, calibration, fallbacks and predictor latency.",
          [("model", "Model", "label_values(sagesched_actual_output_tokens_count, model)")])
b.row("Predicted vs actual")
for q in (0.5, 0.9):
    b.panel(f"Output tokens p{int(q*100)}: predicted mean vs actual",
            "Distribution of predicted means against the tokens engines really generated.",
            [(f'histogram_quantile({q}, sum by (model, le) (rate(sagesched_predicted_output_tokens_bucket{{{M}}}[{RI}])))', "predicted {{model}}"),
             (f'histogram_quantile({q}, sum by (model, le) (rate(sagesched_actual_output_tokens_bucket{{{M}}}[{RI}])))', "actual {{model}}")], "short")
b.panel("Mean actual / mean predicted", "1.0 is calibrated on average; drift away from 1 means the predictor over- or under-estimates.",
        [(f'(sum by (model) (rate(sagesched_actual_output_tokens_sum{{{M}}}[{RI}])) / sum by (model) (rate(sagesched_actual_output_tokens_count{{{M}}}[{RI}]))) / (sum by (model) (rate(sagesched_predicted_output_tokens_sum{{{M}}}[{RI}])) / sum by (model) (rate(sagesched_predicted_output_tokens_count{{{M}}}[{RI}])))', "{{model}}")],
        "short", w=24)
b.row("Calibration (predictor service)")
b.panel("Interval coverage vs target", "Share of completions whose length fell inside the predicted central interval; a calibrated predictor sits at the level (0.5, 0.9).",
        [(f'sum by (level) (rate(sagesched_predictor_interval_hits_total[{RI}])) / ignoring (level) group_left sum(rate(sagesched_predictor_interval_checks_total[{RI}]))', "{{level}} interval, windowed"),
         ('max by (level) (sagesched_predictor_interval_coverage_ratio)', "{{level}} interval, service estimate")],
        "percentunit", minv=0, maxv=1)
b.panel("Predictions and completions learned", "Requests predicted and completions reported back to the predictor, per second.",
        [(f'sum(rate(sagesched_predictor_predictions_total[{RI}]))', "predicted"),
         (f'sum(rate(sagesched_predictor_reports_total[{RI}]))', "learned from")], "ops")
b.row("Fallbacks and latency")
b.panel("Fallbacks by reason", "Predictions the history estimator served because the predictor was late or failed.",
        [(f'sum by (reason) (rate(sagesched_predictor_fallbacks_total[{RI}]))', "{{reason}}")], "ops", stack=True)
b.panel("Fallback ratio", "Share of predictor calls that fell back.",
        [(f'sum(rate(sagesched_predictor_fallbacks_total[{RI}])) / sum(rate(sagesched_predictor_latency_seconds_count[{RI}]))', "fallbacks")], "percentunit", minv=0)
b.panel("Predictor wait (p50 / p99)", "Time the router waited for a prediction (bounded by its deadline).",
        [(f'histogram_quantile({q}, sum by (le) (rate(sagesched_predictor_latency_seconds_bucket[{RI}])))', f"p{int(q*100)}") for q in (0.5, 0.99)], "s")
b.panel("Predictor service batch latency (p99) and batch size (p90)", "Inside the predictor: time to predict one batch, and requests per batch.",
        [(f'histogram_quantile(0.99, sum by (le) (rate(sagesched_predictor_predict_latency_seconds_bucket[{RI}])))', "batch latency p99 (s)"),
         (f'histogram_quantile(0.9, sum by (le) (rate(sagesched_predictor_batch_size_bucket[{RI}])))', "batch size p90")], "short")
b.dump("sagesched-predictor.json")
