"""Counts of post-call work, for `/metrics`: jobs queued and run, webhook delivery attempts.

Jobs run where the queue is: in the backend's own process on SQLite (its `/metrics` shows these), or
in `relayx worker` on PostgreSQL (which serves them on `WORKER_METRICS_PORT` when set). The counts are
per process, like every Prometheus counter: a scraper sums them over processes. One registry for the
process, since the jobs of a process are one stream of work whichever app queued them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

PREFIX = "relayx_jobs"
REGISTRY = CollectorRegistry()
QUEUED = Counter(f"{PREFIX}_queued", "Jobs queued by this process, by task.", ["task"], registry=REGISTRY)
RUN = Counter(f"{PREFIX}_run", "Jobs run by this process, by task and result (succeeded, failed).",
              ["task", "result"], registry=REGISTRY)
WEBHOOK_ATTEMPTS = Counter("relayx_webhook_attempts", "Webhook delivery attempts, by event type and outcome "
                           "(delivered, pending: will be retried, failed: given up).", ["event", "outcome"],
                           registry=REGISTRY)
