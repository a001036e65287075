"""The gateway's Prometheus metrics that code counts as it goes (prometheus_client objects).

A low layer, so that every layer can count without importing upward: the delivery worker (delivered,
rejected, retried, latency), the token cache (requests, failures) and the sources (devices connected,
records fetched, decode errors). What is read from state at scrape time (items per destination and
state, each destination's last delivery) is collected by phg.service.ops, which serves /metrics.

The metrics live in phg's own registry (`REGISTRY`), not prometheus_client's global default, so that
a library user embedding phg gets none of them in their own exposition unless they ask. Labels are
destination and source names from the settings: no patient, device serial or value is ever a label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # CPU, memory, open files of the gateway process



def _counter(name: str, documentation: str, *labels: str) -> Counter:
    return Counter(name, documentation, labels, registry=REGISTRY)


DELIVERED = _counter("phg_delivered", "Readings the destination accepted (a Delivered outcome).", "destination")
REJECTED = _counter("phg_rejected", "Readings dead-lettered: refused by the destination for good.", "destination")
RETRIED = _counter("phg_retried", "Readings put back for a later attempt (transient failure, deferral).", "destination")
# From the reading's enqueue to the destination's 2xx: queueing, back-off and the request itself. Buckets
# from a fast loopback delivery to an hour-long outage.
LATENCY = Histogram("phg_delivery_latency_seconds", "Seconds from enqueue to the destination's acceptance.",
                    ["destination"], registry=REGISTRY,
                    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600))

TOKEN_REQUESTS = _counter("phg_token_requests", "Access token requests sent to a token endpoint.")
TOKEN_FAILURES = _counter("phg_token_failures", "Token requests that got no token (refused, unreachable, bad answer).")

DEVICES_CONNECTED = _counter("phg_source_devices_connected", "Devices (or agents) a source connected to.", "source")
RECORDS_FETCHED = _counter("phg_source_records_fetched", "Readings a source handed to the intake.", "source")
DECODE_ERRORS = _counter("phg_source_decode_errors", "Device data a source could not decode (dropped, logged).",
                         "source")
