"""Our signed peer record once per pubsub stream, not in every RPC (issue 13)."""

from __future__ import annotations

from libp2p.pubsub.pb import rpc_pb2

from p2psync.net.peer_record import RESEND_SECONDS, RecordOnce, without_record


class _Stream:
    """Stands for an INetStream: only its identity matters here."""


def test_a_stream_whose_hello_carried_the_record_is_not_sent_it_again() -> None:
    records, stream = RecordOnce(), _Stream()
    assert records.carried(stream, b"record-1", 0.0, hello=True)  # type: ignore[arg-type]
    assert records.carried(stream, b"record-1", 5.0, hello=True)  # type: ignore[arg-type]


def test_without_a_hello_the_record_goes_until_a_write_of_it_succeeded() -> None:
    records, stream = RecordOnce(), _Stream()
    assert not records.carried(stream, b"record-1", 0.0, hello=False)  # type: ignore[arg-type]
    # A failed or cancelled write notes nothing: the next RPC carries it.
    assert not records.carried(stream, b"record-1", 1.0, hello=False)  # type: ignore[arg-type]
    records.written(stream, b"record-1", 1.0)  # type: ignore[arg-type]
    assert records.carried(stream, b"record-1", 2.0, hello=False)  # type: ignore[arg-type]


def test_a_new_record_or_an_old_one_goes_again() -> None:
    records, stream, other = RecordOnce(), _Stream(), _Stream()
    records.written(stream, b"record-1", 0.0)  # type: ignore[arg-type]
    # New addresses make a new record: it goes out at once.
    assert not records.carried(stream, b"record-2", 1.0, hello=True)  # type: ignore[arg-type]
    # Receivers keep a record 2 h: it is sent again long before that.
    assert not records.carried(stream, b"record-1", RESEND_SECONDS, hello=True)  # type: ignore[arg-type]
    assert RESEND_SECONDS < 7200 / 4
    # Another stream (another peer, a reconnect) has its own.
    assert not records.carried(other, b"record-1", 1.0, hello=False)  # type: ignore[arg-type]


def test_the_lean_rpc_is_a_copy_without_the_record() -> None:
    rpc = rpc_pb2.RPC(publish=[rpc_pb2.Message(data=b"entry", topicIDs=["t"])])
    rpc.senderRecord = b"record-1"
    lean = without_record(rpc)
    assert not lean.HasField("senderRecord")
    assert list(lean.publish) == list(rpc.publish)
    # py-libp2p writes one RPC object to several peers: never changed in place.
    assert rpc.senderRecord == b"record-1"
