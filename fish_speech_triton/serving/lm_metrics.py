"""The LM's Prometheus gauges, as `llama_semantic` exports them on Triton's metrics endpoint, and read back.

The HPA scales on the pending requests, the pods' preStop hook waits for both to reach zero, and the
tests check them by value.
"""

from __future__ import annotations

import re

PENDING = "fish_speech_lm_pending_requests"
ACTIVE = "fish_speech_lm_active_sequences"
DESCRIPTIONS = {
    PENDING: "Requests waiting for a free KV-cache slot",
    ACTIVE: "Sequences decoded together in the current batch",
}
_SAMPLE = re.compile(rf"^({PENDING}|{ACTIVE})\{{([^}}]*)\}} (\S+)$", re.MULTILINE)
_INSTANCE = re.compile(r'(?:^|,)instance="([^"]*)"')


def read_gauges(metrics: str) -> dict[tuple[str, str], float]:
    """`{(gauge name, model instance): value}` from the text of a Prometheus scrape."""
    gauges = {}
    for name, labels, value in _SAMPLE.findall(metrics):
        instance = _INSTANCE.search(labels)
        gauges[(name, instance[1] if instance else "")] = float(value)
    return gauges
