"""The server's Prometheus metrics, in their own registry (so two apps in one process do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Seconds: a tiny model's token takes a few milliseconds on a CPU, a big one's first token seconds.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServingMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("serve_queue_depth", "requests waiting for a decode slot", registry=r)
        self.slots_in_use = Gauge("serve_slots_in_use", "decode slots holding a request", registry=r)
        self.time_to_first_token = Histogram("serve_time_to_first_token_seconds", "arrival to first token",
                                             buckets=_LATENCY_BUCKETS, registry=r)
        self.time_per_output_token = Histogram("serve_time_per_output_token_seconds", "between a request's tokens",
                                               buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens_generated = Counter("serve_tokens_generated", "tokens produced, all requests", registry=r)
        self.prefix_cache_hit_tokens = Counter("serve_prefix_cache_hit_tokens", "prompt tokens whose keys and values "
                                               "came from the prefix cache", registry=r)
        self.prefix_cache_miss_tokens = Counter("serve_prefix_cache_miss_tokens", "prompt tokens prefilled (with the "
                                                "prefix cache on)", registry=r)
        self.prefix_cache_blocks = Gauge("serve_prefix_cache_blocks", "blocks of prompt tokens the prefix cache holds",
                                         registry=r)
        self.requests = Counter("serve_requests", "HTTP requests answered, by route and status",
                                ("route", "status"), registry=r)
