"""A node's side of a circuit relay: reserve, rendezvous, dial through, hole punch.

py-libp2p 0.8.1 does the protocols; this module only drives them for one
``Libp2pHost``:

- circuit relay v2 (``libp2p.relay.circuit_v2``): the STOP handler
  (``CircuitV2Protocol``, hop off) accepts connections a relay brings us;
  ``CircuitV2Transport.dial`` opens ours through a relay. py-libp2p's swarm
  never dials a ``/p2p-circuit`` address itself, so ``Libp2pHost.connect``
  hands such addresses to ``dial`` here (``host.circuit_dial``).
- RESERVE is sent here rather than by ``CircuitV2Transport._make_reservation``,
  which answers only True/False and logs the relay's status code: the node
  needs the code for its one-line error ("refused: PERMISSION_DENIED").
- rendezvous (``libp2p.discovery.rendezvous``): REGISTER and DISCOVER go
  through ``RendezvousClient._send_message`` with the library's message
  builders; the answer is parsed here, one registration at a time, because
  ``RendezvousClient.discover`` throws the whole answer away when a single
  address in it is garbage. We register only our circuit address (the relay
  and nobody else learns our LAN addresses from us).
- DCUtR (``CalmDCUtR``, net/hole_punch.py): answers hole-punch requests
  and now and then tries to upgrade a relayed connection to a direct one.
- A dial through a relay answered NO_RESERVATION marks the peer
  ``unreserved`` for UNRESERVED_SECONDS: a rendezvous point that lists
  stale or invented ids does not get them dialed every few seconds.

Everything a relay or rendezvous point answers is untrusted: peers come back
as `Registration` values whose ids and addresses were checked, and whatever
failed a check is counted in `DiscoverResult.garbage`.

API::

    client = RelayClient(host, dcutr=True)
    await nursery.start(client.run)                     # handlers up; dials routed here
    relay = await client.connect_relay(addr, timeout)   # -> relay peer id (RelayError)
    expires = await client.reserve(relay, timeout)      # unix time (RelayError)
    await client.register(relay, namespace, relay_addr, ttl, timeout)
    result = await client.discover(relay, namespace, limit, timeout)
    client.relay_connected(relay) -> bool
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import multiaddr
import trio
from libp2p.abc import INetConn
from libp2p.discovery.rendezvous.client import RendezvousClient
from libp2p.discovery.rendezvous.messages import (
    create_discover_message,
    create_register_message,
    create_unregister_message,
)
from libp2p.discovery.rendezvous.pb.rendezvous_pb2 import Message
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg
from libp2p.tools.anyio_service import background_trio_service

from p2psync.core.ids import InvalidPeerId, public_key_from_peer_id
from p2psync.net.hole_punch import CalmDCUtR, connection_is_relayed
from p2psync.net.host import Libp2pHost

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

CIRCUIT = "/p2p-circuit"
MAX_REGISTRATIONS = 256  # read from one DISCOVER, all pages together; the rest is ignored
DISCOVER_PAGES = 4
UNRESERVED_SECONDS = 600.0  # a listed peer the relay has no reservation for is skipped
MAX_UNRESERVED = 4096
MAX_ADDRS_PER_REGISTRATION = 8
MAX_ADDR_BYTES = 512

# What this node accepts on circuits a relay brings in (its STOP side).
_LIMITS = RelayLimits(duration=3600, data=1 << 30, max_circuit_conns=64, max_reservations=0)


class RelayError(Exception):
    """A relay could not be used; ``kind`` is the metric label, the message one line."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Registration:
    peer_id: str
    addrs: tuple[str, ...]


@dataclass(slots=True)
class DiscoverResult:
    peers: list[Registration] = field(default_factory=list)
    garbage: int = 0  # registrations or addresses that failed a check


def is_circuit_addr(addr: str) -> bool:
    return CIRCUIT in addr


def circuit_addr(relay_addr: str, peer_id: str) -> str:
    """``<relay addr>/p2p/<relay>/p2p-circuit/p2p/<peer>``: the peer, through the relay."""
    return f"{relay_addr}{CIRCUIT}/p2p/{peer_id}"


def _is_ed25519_peer(peer_id: str) -> bool:
    try:
        public_key_from_peer_id(peer_id)
    except InvalidPeerId:
        return False
    return True


def check_registration(
    raw_peer_id: bytes, raw_addrs: list[bytes], relay_id: str
) -> Registration | None:
    """A registration as the rendezvous point handed it over, checked; None if garbage.

    Its id must be an Ed25519 peer id, and its addresses circuit addresses
    through ``relay_id`` ending in that same id: anything else is no way to
    reach the peer through this relay, whatever it claims.
    """
    try:
        peer_id = ID(raw_peer_id).to_base58()
    except Exception:
        return None
    if not _is_ed25519_peer(peer_id):
        return None
    addrs: list[str] = []
    for raw in raw_addrs[:MAX_ADDRS_PER_REGISTRATION]:
        if len(raw) > MAX_ADDR_BYTES:
            return None
        try:
            text = str(multiaddr.Multiaddr(raw))
        except Exception:
            return None
        if not text.endswith(f"/p2p/{relay_id}{CIRCUIT}") and not text.endswith(
            f"/p2p/{relay_id}{CIRCUIT}/p2p/{peer_id}"
        ):
            return None
        addrs.append(text)
    if not addrs:
        return None
    return Registration(peer_id, tuple(addrs))


class RelayClient:
    """Circuit relay client, rendezvous client and DCUtR for one host."""

    def __init__(self, host: Libp2pHost, *, dcutr: bool = True) -> None:
        self._net = host
        self._host = host.libp2p
        self._protocol = CircuitV2Protocol(self._host, limits=_LIMITS, allow_hop=False)
        # STOP only: CLIENT would send a RESERVE before every dial.
        config = RelayConfig(roles=RelayRole.STOP, limits=_LIMITS)
        self._transport = CircuitV2Transport(self._host, self._protocol, config)
        self._dcutr = CalmDCUtR(self._host) if dcutr else None
        self._rendezvous: dict[ID, RendezvousClient] = {}
        # Peers a rendezvous point listed that a relay then said hold no
        # reservation (a stale or invented listing): not dialed again for a while.
        self._unreserved: dict[str, float] = {}

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the STOP and DCUtR protocols and route circuit dials here, until cancelled."""
        async with background_trio_service(self._protocol):
            await self._protocol.event_started.wait()
            if self._dcutr is None:
                await self._serve(task_status)
            else:
                async with background_trio_service(self._dcutr):
                    await self._dcutr.event_started.wait()
                    await self._serve(task_status)

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        self._net.circuit_dial = self._dial
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self._net.circuit_dial = None

    async def _dial(self, peer: ID, addr: multiaddr.Multiaddr) -> None:
        try:
            await self._transport.dial(addr)
        except Exception as exc:
            if says_no_reservation(exc):
                self._note_unreserved(peer.to_base58())
            raise

    def _note_unreserved(self, peer_id: str) -> None:
        now = trio.current_time()
        if len(self._unreserved) >= MAX_UNRESERVED:
            self._unreserved = {p: t for p, t in self._unreserved.items() if t > now}
        if len(self._unreserved) < MAX_UNRESERVED:
            self._unreserved[peer_id] = now + UNRESERVED_SECONDS

    def unreserved(self, peer_id: str) -> bool:
        """A dial through a relay to this peer found it had no reservation, lately."""
        until = self._unreserved.get(peer_id)
        if until is None:
            return False
        if trio.current_time() < until:
            return True
        del self._unreserved[peer_id]
        return False

    # -- the relay itself ----------------------------------------------------

    async def connect_relay(self, relay_addr: str, timeout: float) -> ID:
        """Connect to the relay (no pubsub: a relay is no member of the network)."""
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(relay_addr))
        except Exception as exc:
            raise RelayError("bad_address", f"not a relay multiaddr: {relay_addr}") from exc
        if info.peer_id in self._conns():
            return info.peer_id
        self._net.allow_dial(info.peer_id)
        try:
            with trio.fail_after(timeout):
                await self._host.connect(info)
        except trio.TooSlowError:
            raise RelayError("unreachable", f"no answer within {timeout:g} s") from None
        except Exception as exc:
            raise RelayError("unreachable", f"cannot connect: {_short(exc)}") from exc
        finally:
            self._net.allow_dial(info.peer_id, allowed=False)
        return info.peer_id

    def relay_connected(self, relay: ID) -> bool:
        return relay in self._conns()

    async def disconnect_relay(self, relay: ID) -> None:
        with trio.move_on_after(2):
            await self._host.disconnect(relay)

    def _conns(self) -> dict[ID, list[INetConn]]:
        conns: dict[ID, list[INetConn]] = self._host.get_network().connections
        return conns

    def is_relayed(self, peer_id: str) -> bool:
        """Connected to the peer, and only through a relay (``/p2p-circuit``)."""
        conns = self._conns().get(ID.from_base58(peer_id))
        if not conns:
            return False
        addrs: list[str] = []
        for conn in conns:
            try:
                addrs.extend(str(a) for a in conn.get_transport_addresses())
            except Exception:
                return False  # half torn down: say nothing we do not know
        return connection_is_relayed(addrs)

    async def reserve(self, relay: ID, timeout: float) -> int:
        """Reserve a slot on the relay; the reservation's expiry (unix seconds)."""
        try:
            with trio.fail_after(timeout):
                stream = await self._host.new_stream(relay, [HOP_PROTOCOL])
                try:
                    await write_delimited_msg(stream, HopMessage(type=HopMessage.RESERVE))
                    answer = await read_delimited_msg(stream, HopMessage)
                finally:
                    with trio.move_on_after(1) as scope:
                        scope.shield = True
                        await _close_quietly(stream)
        except trio.TooSlowError:
            raise RelayError("unreachable", f"no reservation answer within {timeout:g} s") from None
        except Exception as exc:
            raise RelayError("refused", f"reservation failed: {_short(exc)}") from exc
        status = answer.status if answer.HasField("status") else StatusCode.UNUSED
        if status != StatusCode.OK:
            name = StatusCode(status).name if status in StatusCode._value2member_map_ else status
            raise RelayError("refused", f"reservation refused: {name}")
        if not answer.HasField("reservation"):
            raise RelayError("bad_answer", "reservation accepted without its expiry")
        return int(answer.reservation.expire)

    # -- rendezvous ------------------------------------------------------------

    def _client(self, relay: ID) -> RendezvousClient:
        client = self._rendezvous.get(relay)
        if client is None:
            client = self._rendezvous[relay] = RendezvousClient(self._host, relay)
        return client

    async def _ask(self, relay: ID, message: Message, timeout: float) -> Message:
        try:
            with trio.fail_after(timeout):
                answer = await self._client(relay)._send_message(message)
        except trio.TooSlowError:
            raise RelayError("unreachable", f"no rendezvous answer within {timeout:g} s") from None
        except Exception as exc:
            raise RelayError("refused", f"rendezvous failed: {_short(exc)}") from exc
        if answer is None:
            raise RelayError("bad_answer", "rendezvous point did not answer")
        return answer

    async def register(
        self, relay: ID, namespace: str, relay_addr: str, ttl: int, timeout: float
    ) -> int:
        """Register our circuit address through this relay under ``namespace``; the TTL."""
        # Built with no address and ours added after: the library's builder
        # cuts a multiaddr at its last /p2p/, which would leave the relay's
        # bare address instead of our circuit address through it.
        message = create_register_message(namespace, self._host.get_id(), [], ttl)
        message.register.peer.addrs.append(multiaddr.Multiaddr(f"{relay_addr}{CIRCUIT}").to_bytes())
        answer = await self._ask(relay, message, timeout)
        if answer.type != Message.REGISTER_RESPONSE:
            raise RelayError("bad_answer", f"rendezvous answered type {answer.type} to REGISTER")
        result = answer.registerResponse
        if result.status != Message.ResponseStatus.OK:
            raise RelayError(
                "refused", f"registration refused: {result.statusText[:80] or result.status}"
            )
        return int(result.ttl)

    async def unregister(self, relay: ID, namespace: str) -> None:
        message = create_unregister_message(namespace, self._host.get_id())
        with trio.move_on_after(2):
            try:
                await self._client(relay)._send_message(message, expect_response=False)
            except Exception as exc:
                log.debug("unregister at %s failed: %s", relay, exc)

    async def discover(
        self, relay: ID, namespace: str, limit: int, timeout: float
    ) -> DiscoverResult:
        """The peers registered under ``namespace``, checked (see check_registration).

        Follows the answer's cookie for up to DISCOVER_PAGES pages and
        MAX_REGISTRATIONS registrations, so a namespace crowded by strangers
        cannot hide the members behind its first page. The relay itself and
        this node are never listed (a relay naming itself is garbage).
        """
        result = DiscoverResult()
        relay_id = relay.to_base58()
        me = self._net.peer_id
        cookie = b""
        seen = 0
        for _ in range(DISCOVER_PAGES):
            message = create_discover_message(namespace, limit, cookie)
            answer = await self._ask(relay, message, timeout)
            if answer.type != Message.DISCOVER_RESPONSE:
                raise RelayError(
                    "bad_answer", f"rendezvous answered type {answer.type} to DISCOVER"
                )
            found = answer.discoverResponse
            if found.status != Message.ResponseStatus.OK:
                why = found.statusText[:80] or found.status
                raise RelayError("refused", f"discovery refused: {why}")
            registrations = list(found.registrations)
            room = MAX_REGISTRATIONS - seen
            result.garbage += max(0, len(registrations) - room)
            for registration in registrations[:room]:
                seen += 1
                checked = check_registration(
                    registration.peer.id, list(registration.peer.addrs), relay_id
                )
                if checked is None or checked.peer_id == relay_id:
                    result.garbage += 1
                elif checked.peer_id != me:
                    result.peers.append(checked)
            cookie = bytes(found.cookie)
            if not cookie or not registrations or seen >= MAX_REGISTRATIONS:
                break
        return result


def says_no_reservation(exc: BaseException) -> bool:
    """The relay answered NO_RESERVATION to a CONNECT (py-libp2p wraps that error)."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            break
        if getattr(seen, "status_code", None) == StatusCode.NO_RESERVATION:
            return True
        if "NO_RESERVATION" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


async def _close_quietly(stream: object) -> None:
    close = getattr(stream, "close", None)
    if close is None:
        return
    try:
        await close()
    except Exception:
        log.debug("closing a relay stream failed", exc_info=True)


__all__ = [
    "DiscoverResult",
    "Registration",
    "RelayClient",
    "RelayError",
    "check_registration",
    "circuit_addr",
    "connection_is_relayed",
    "is_circuit_addr",
    "says_no_reservation",
]
