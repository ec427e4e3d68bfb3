from __future__ import annotations

from p2psync.api.metrics import DROP_REASONS, REJECT_REASONS, Metrics

SPEC_NAMES = (
    "p2psync_entries_total",
    "p2psync_entries_applied_total",
    "p2psync_entries_rejected_total",
    "p2psync_live_ops_received_total",
    "p2psync_backfill_entries_received_total",
    "p2psync_sync_rounds_total",
    "p2psync_sync_round_seconds",
    "p2psync_op_apply_latency_seconds",
    "p2psync_peers_connected",
    "p2psync_messages_dropped_total",
)


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_every_spec_metric_is_exposed_with_type_line() -> None:
    body, content_type = Metrics().render()
    text = body.decode()
    assert content_type.startswith("text/plain")
    for name in SPEC_NAMES:
        assert f"# TYPE {name} " in text, name


def test_common_labels_show_at_zero_before_any_event() -> None:
    metrics = Metrics()
    assert sample(metrics, "p2psync_entries_total", origin_kind="own") == 0
    assert sample(metrics, "p2psync_entries_total", origin_kind="remote") == 0
    assert sample(metrics, "p2psync_sync_rounds_total", result="ok") == 0
    assert sample(metrics, "p2psync_sync_rounds_total", result="failed") == 0
    for reason in REJECT_REASONS:
        assert sample(metrics, "p2psync_entries_rejected_total", reason=reason) == 0
    for reason in DROP_REASONS:
        assert sample(metrics, "p2psync_messages_dropped_total", reason=reason) == 0


def test_typed_methods_move_their_metric() -> None:
    m = Metrics()
    m.set_entries(own=3, remote=7)
    m.entries_applied(10)
    m.entries_applied()
    m.entries_rejected("bad_signature", 2)
    m.entries_rejected("something_new")
    m.live_ops_received(4)
    m.backfill_entries_received(250)
    m.sync_round(ok=True, seconds=0.2)
    m.sync_round(ok=False, seconds=1.5)
    m.observe_apply_latency(0.003)
    m.set_peers_connected(2)
    m.dropped("queue_full", 5)

    assert sample(m, "p2psync_entries_total", origin_kind="own") == 3
    assert sample(m, "p2psync_entries_total", origin_kind="remote") == 7
    assert sample(m, "p2psync_entries_applied_total") == 11
    assert sample(m, "p2psync_entries_rejected_total", reason="bad_signature") == 2
    assert sample(m, "p2psync_entries_rejected_total", reason="something_new") == 1
    assert sample(m, "p2psync_live_ops_received_total") == 4
    assert sample(m, "p2psync_backfill_entries_received_total") == 250
    assert sample(m, "p2psync_sync_rounds_total", result="ok") == 1
    assert sample(m, "p2psync_sync_rounds_total", result="failed") == 1
    assert sample(m, "p2psync_sync_round_seconds_count") == 2
    assert sample(m, "p2psync_op_apply_latency_seconds_bucket", le="0.005") == 1
    assert sample(m, "p2psync_peers_connected") == 2
    assert sample(m, "p2psync_messages_dropped_total", reason="queue_full") == 5


def test_negative_apply_latency_from_clock_skew_counts_as_zero() -> None:
    m = Metrics()
    m.observe_apply_latency(-0.5)
    assert sample(m, "p2psync_op_apply_latency_seconds_bucket", le="0.001") == 1
    assert sample(m, "p2psync_op_apply_latency_seconds_sum") == 0


def test_apply_latency_buckets_span_1ms_to_10s() -> None:
    m = Metrics()
    assert sample(m, "p2psync_op_apply_latency_seconds_bucket", le="0.001") == 0
    assert sample(m, "p2psync_op_apply_latency_seconds_bucket", le="10.0") == 0


def test_two_nodes_in_one_process_keep_separate_metrics() -> None:
    a, b = Metrics(), Metrics()
    a.entries_applied(5)
    assert sample(a, "p2psync_entries_applied_total") == 5
    assert sample(b, "p2psync_entries_applied_total") == 0
