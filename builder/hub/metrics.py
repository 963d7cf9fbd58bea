"""The hub's Prometheus metrics (text format 0.0.4), shared by the server's threads."""

from __future__ import annotations

import threading
from collections import Counter

LAT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.enroll: Counter[str] = Counter()
        self.lat_buckets = [0] * (len(LAT_BUCKETS) + 1)
        self.lat_sum = 0.0
        self.lat_count = 0
        self.batches = 0
        self.batch_items = 0
        self.wg_errors = 0
        self.db_seconds = 0.0
        self.wg_seconds = 0.0
        self.auth_failures = 0
        self.auth_throttled = 0
        self.writer_restarts = 0
        self.dropped: Counter[str] = Counter()
        self.hub = ""  # this hub's name in the store (label of the store counters)
        # etcd compare-and-swap: failures (each one re-runs the change on a fresh snapshot)
        # and give-ups (503); the writer's are added per batch, the server's own (join and
        # complete bookkeeping, token and approval changes) are read at render time
        self.store_conflicts = 0
        self.store_giveups = 0

    def request(self, path: str, status: int) -> None:
        with self.lock:
            self.requests[(path, status)] += 1

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)

    def drop(self, reason: str) -> None:
        with self.lock:
            self.dropped[reason] += 1

    def enrolled(self, result: str, seconds: float) -> None:
        with self.lock:
            self.enroll[result] += 1
            self.lat_sum += seconds
            self.lat_count += 1
            for i, b in enumerate(LAT_BUCKETS):
                if seconds <= b:
                    self.lat_buckets[i] += 1
                    break
            else:
                self.lat_buckets[-1] += 1

    def render(self, node_states: dict[str, int], store: tuple[int, int] = (0, 0)) -> str:
        """The text page; ``store``: the server process's own (conflicts, give-ups)."""
        out = []
        with self.lock:
            out.append("# HELP nodeforge_hub_requests_total HTTP requests by path and status.")
            out.append("# TYPE nodeforge_hub_requests_total counter")
            for (path, status), n in sorted(self.requests.items()):
                out.append(f'nodeforge_hub_requests_total{{path="{path}",code="{status}"}} {n}')
            out.append("# HELP nodeforge_hub_enrollments_total Enrollment results.")
            out.append("# TYPE nodeforge_hub_enrollments_total counter")
            for result, n in sorted(self.enroll.items()):
                out.append(f'nodeforge_hub_enrollments_total{{result="{result}"}} {n}')
            out.append("# HELP nodeforge_hub_enroll_seconds Enrollment latency (queue+db+wg).")
            out.append("# TYPE nodeforge_hub_enroll_seconds histogram")
            acc = 0
            for b, n in zip(LAT_BUCKETS, self.lat_buckets, strict=False):
                acc += n
                out.append(f'nodeforge_hub_enroll_seconds_bucket{{le="{b}"}} {acc}')
            out.append(f'nodeforge_hub_enroll_seconds_bucket{{le="+Inf"}} {self.lat_count}')
            out.append(f"nodeforge_hub_enroll_seconds_sum {self.lat_sum:.6f}")
            out.append(f"nodeforge_hub_enroll_seconds_count {self.lat_count}")
            out.append("# TYPE nodeforge_hub_batches_total counter")
            out.append(f"nodeforge_hub_batches_total {self.batches}")
            out.append(f"nodeforge_hub_batch_items_total {self.batch_items}")
            out.append("# HELP nodeforge_hub_db_seconds_total Writer time in SQLite.")
            out.append("# TYPE nodeforge_hub_db_seconds_total counter")
            out.append(f"nodeforge_hub_db_seconds_total {self.db_seconds:.6f}")
            out.append("# HELP nodeforge_hub_wg_seconds_total Writer time applying peers.")
            out.append("# TYPE nodeforge_hub_wg_seconds_total counter")
            out.append(f"nodeforge_hub_wg_seconds_total {self.wg_seconds:.6f}")
            out.append("# TYPE nodeforge_hub_wg_errors_total counter")
            out.append(f"nodeforge_hub_wg_errors_total {self.wg_errors}")
            out.append(
                "# HELP nodeforge_hub_auth_failures_total Failed authentications "
                "(unknown token, bad secret), all sources together."
            )
            out.append("# TYPE nodeforge_hub_auth_failures_total counter")
            out.append(f"nodeforge_hub_auth_failures_total {self.auth_failures}")
            out.append(
                "# HELP nodeforge_hub_auth_throttled_total Requests refused (429) because the "
                "site-wide failed-auth budget was spent."
            )
            out.append("# TYPE nodeforge_hub_auth_throttled_total counter")
            out.append(f"nodeforge_hub_auth_throttled_total {self.auth_throttled}")
            out.append("# HELP nodeforge_hub_writer_restarts_total Writer processes restarted.")
            out.append("# TYPE nodeforge_hub_writer_restarts_total counter")
            out.append(f"nodeforge_hub_writer_restarts_total {self.writer_restarts}")
            out.append(
                "# HELP nodeforge_hub_connections_dropped_total Connections closed by a limit."
            )
            out.append("# TYPE nodeforge_hub_connections_dropped_total counter")
            for reason, n in sorted(self.dropped.items()):
                out.append(f'nodeforge_hub_connections_dropped_total{{reason="{reason}"}} {n}')
            hub = f'{{hub="{self.hub}"}}'
            out.append(
                "# HELP nodeforge_hub_store_conflicts_total Store transactions whose compare "
                "failed because another hub committed first; each is run again (etcd; 0 on "
                "SQLite)."
            )
            out.append("# TYPE nodeforge_hub_store_conflicts_total counter")
            out.append(
                f"nodeforge_hub_store_conflicts_total{hub} {self.store_conflicts + store[0]}"
            )
            out.append(
                "# HELP nodeforge_hub_store_giveups_total Changes that gave up after too many "
                "conflicts in a row (answered 503)."
            )
            out.append("# TYPE nodeforge_hub_store_giveups_total counter")
            out.append(f"nodeforge_hub_store_giveups_total{hub} {self.store_giveups + store[1]}")
        out.append("# HELP nodeforge_hub_nodes Nodes by state.")
        out.append("# TYPE nodeforge_hub_nodes gauge")
        for state in ("pending", "active", "joined", "revoked"):
            out.append(f'nodeforge_hub_nodes{{state="{state}"}} {node_states.get(state, 0)}')
        return "\n".join(out) + "\n"
