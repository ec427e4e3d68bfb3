"""The relay's rendezvous point: py-libp2p's ``RendezvousService``, bounded.

py-libp2p 0.8.1 checks little of a REGISTER (a TTL up to 72 h, any number
of addresses up to 2 KiB each, any namespace) and answers a DISCOVER with
the first registrations in insertion order, however large: one key stored
76 MB in 20 namespaces, two fat registrations pushed every answer past the
4 MiB message cap (discovery broke for everyone), and 200 strangers
registered first hid every honest node. Here (``BoundedRendezvous``):

- a REGISTER is taken only from a peer for itself, only while it holds a
  reservation on this relay (``may_register``; the registration is useless
  without one), only in a p2psync members namespace
  (``/p2psync/<network>/v<n>/members``), in at most
  ``max_namespaces_per_peer`` of them, with its TTL clamped to ``max_ttl``
  and 1 to ``max_addrs`` addresses of at most ``max_addr_bytes`` each, every
  one a circuit address through this relay;
- a peer's registrations go when its last connection closes (``forget``);
- a DISCOVER lists the newest registrations first, at most ``max_discover``
  and ``max_answer_bytes`` of them per answer, with a cookie for the next
  page; an unknown namespace answers empty without being created;
- at most ``max_namespaces`` namespaces exist.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import multiaddr
from libp2p.abc import IHost, INetStream
from libp2p.discovery.rendezvous.config import MAX_NAMESPACE_LENGTH, MAX_REGISTRATIONS
from libp2p.discovery.rendezvous.messages import (
    create_discover_response_message,
    create_register_response_message,
)
from libp2p.discovery.rendezvous.pb.rendezvous_pb2 import Message
from libp2p.discovery.rendezvous.service import RegistrationRecord, RendezvousService
from libp2p.peer.id import ID

MEMBERS_NAMESPACE = re.compile(r"/p2psync/[A-Za-z0-9._-]{1,64}/v[0-9]{1,4}/members")
_Status = Message.ResponseStatus


@dataclass(frozen=True, slots=True)
class RendezvousLimits:
    max_ttl: int = 1200  # seconds; nodes register for 600 and renew every 120
    max_addrs: int = 8
    max_addr_bytes: int = 512
    max_namespaces_per_peer: int = 4
    max_discover: int = 200  # registrations per answer
    max_answer_bytes: int = 256 * 1024


class BoundedRendezvous(RendezvousService):
    def __init__(
        self,
        host: IHost,
        relay_id: str,
        max_namespaces: int,
        limits: RendezvousLimits,
        *,
        admit: Callable[[ID], bool],
        may_register: Callable[[ID], bool],
    ) -> None:
        super().__init__(host)
        self._circuit = f"/p2p/{relay_id}/p2p-circuit"
        self._max_namespaces = max_namespaces
        self.limits = limits
        self._admit = admit
        self._may_register = may_register

    async def _handle_stream(self, stream: INetStream) -> None:
        if not self._admit(stream.muxed_conn.peer_id):
            await stream.reset()
            return
        await super()._handle_stream(stream)

    def forget(self, peer: ID) -> None:
        for namespace in list(self.registrations):
            registered = self.registrations[namespace]
            registered.pop(peer, None)
            if not registered:
                del self.registrations[namespace]

    def namespaces_of(self, peer: ID) -> int:
        return sum(1 for registered in self.registrations.values() if peer in registered)

    def _handle_register(self, peer_id: ID, register_msg: Message.Register) -> Message:
        why = self._refusal(peer_id, register_msg)
        if why is not None:
            return create_register_response_message(why[0], why[1])
        namespace = register_msg.ns
        registered = self.registrations.get(namespace)
        if registered is None:
            if len(self.registrations) >= self._max_namespaces:
                self.cleanup_all_expired()
                if len(self.registrations) >= self._max_namespaces:
                    return create_register_response_message(
                        _Status.E_UNAVAILABLE, "too many namespaces"
                    )
            registered = self.registrations[namespace] = {}
        if peer_id not in registered and len(registered) >= MAX_REGISTRATIONS:
            self._cleanup_expired_registrations(namespace)
            if len(registered) >= MAX_REGISTRATIONS:
                return create_register_response_message(_Status.E_UNAVAILABLE, "namespace full")
        ttl = min(int(register_msg.ttl), self.limits.max_ttl)
        addrs = [bytes(a) for a in register_msg.peer.addrs]
        registered.pop(peer_id, None)  # to the end: the dict keeps registration order
        registered[peer_id] = RegistrationRecord(peer_id, addrs, namespace, ttl)
        return create_register_response_message(_Status.OK, "OK", ttl)

    def _refusal(
        self, peer_id: ID, register_msg: Message.Register
    ) -> tuple[_Status.ValueType, str] | None:
        limits = self.limits
        if register_msg.peer.id != peer_id.to_bytes():
            return _Status.E_NOT_AUTHORIZED, "a peer can only register itself"
        if not MEMBERS_NAMESPACE.fullmatch(register_msg.ns):
            return _Status.E_INVALID_NAMESPACE, "not a p2psync members namespace"
        if register_msg.ttl <= 0:
            return _Status.E_INVALID_TTL, "TTL must be positive"
        addrs = register_msg.peer.addrs
        if not 1 <= len(addrs) <= limits.max_addrs:
            return _Status.E_INVALID_PEER_INFO, f"1 to {limits.max_addrs} addresses"
        for raw in addrs:
            if len(raw) > limits.max_addr_bytes or not self._is_our_circuit(raw):
                return _Status.E_INVALID_PEER_INFO, "addresses must be circuits through this relay"
        if not self._may_register(peer_id):
            return _Status.E_NOT_AUTHORIZED, "reserve a slot on this relay first"
        namespace = register_msg.ns
        if (
            peer_id not in self.registrations.get(namespace, {})
            and self.namespaces_of(peer_id) >= limits.max_namespaces_per_peer
        ):
            return _Status.E_UNAVAILABLE, "too many namespaces for this peer"
        return None

    def _is_our_circuit(self, raw: bytes) -> bool:
        try:
            text = str(multiaddr.Multiaddr(raw))
        except Exception:
            return False
        return self._circuit in text

    def _handle_discover(self, peer_id: ID, discover_msg: Message.Discover) -> Message:
        namespace = discover_msg.ns
        if not namespace or len(namespace) > MAX_NAMESPACE_LENGTH:
            return create_discover_response_message(
                [], b"", _Status.E_INVALID_NAMESPACE, "Invalid namespace"
            )
        if namespace not in self.registrations:
            return create_discover_response_message([], b"", _Status.OK, "OK")
        cookie = bytes(discover_msg.cookie)
        if len(cookie) > 4:
            return create_discover_response_message(
                [], b"", _Status.E_INVALID_COOKIE, "Invalid cookie"
            )
        offset = int.from_bytes(cookie, "big")
        self._cleanup_expired_registrations(namespace)
        live = [  # newest first
            record
            for record in reversed(self.registrations[namespace].values())
            if self._may_register(record.peer_id)
        ]
        limit = discover_msg.limit
        if not 0 < limit <= self.limits.max_discover:
            limit = self.limits.max_discover
        answer: list[Message.Register] = []
        size = 0
        for record in live[offset:]:
            if len(answer) >= limit:
                break
            register = record.to_protobuf_register()
            size += register.ByteSize()
            if answer and size > self.limits.max_answer_bytes:
                break
            answer.append(register)
        end = offset + len(answer)
        next_cookie = end.to_bytes(4, "big") if end < len(live) else b""
        return create_discover_response_message(answer, next_cookie, _Status.OK, "OK")
