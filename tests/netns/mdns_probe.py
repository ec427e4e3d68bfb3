"""mDNS probe, run INSIDE a test's network namespace (never in the root one).

    ip netns exec NS python mdns_probe.py serve --netns NS --peer-id ID \
        --addr /ip4/10.77.0.1/tcp/4001/p2p/ID --network a --seconds 6 \
        [--interface-ip 10.77.0.1]
    ip netns exec NS python mdns_probe.py ptr-txt --netns NS --interface-ip IP \
        --txt dnsaddr=/ip4/... --txt p2psync=a --seconds 6 \
        [--records one|each] [--section answers|additionals]

Prints JSON lines on stdout:
    {"event": "netns", "ok": bool, ...}   first line; the probe refuses to
                                          touch the network unless ok
    {"event": "started", "t": s}          serve: service registered
    {"event": "found", "t": s, "peer_id": ..., "addrs": [...]}
    {"event": "done", "threads": [...]}   threads still alive after shutdown

`ptr-txt` is a raw responder in the shape of js-libp2p's answers: PTR + TXT
only, no SRV and no A record, on `_p2p._udp.local.`. `--records each` puts
each --txt string in a TXT record of its own (as js-libp2p does), `one` all
of them in one record; `--section` says whether the TXT records travel as
answers (js-libp2p) or additionals (the spec, zeroconf). zeroconf's
register_service always adds SRV, so it crafts the packets itself and sends
them unsolicited, every 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

T0 = time.monotonic()


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": round(time.monotonic() - T0, 3), **fields}), flush=True)


def check_netns(name: str) -> bool:
    """True iff this process runs in the network namespace /run/netns/NAME."""
    try:
        mine = os.stat("/proc/self/ns/net")
        theirs = os.stat(f"/run/netns/{name}")
        root_ok = True
        try:
            root = os.stat("/proc/1/ns/net")  # EPERM on these machines, even as root
            root_ok = (root.st_dev, root.st_ino) != (mine.st_dev, mine.st_ino)
        except OSError:
            pass
    except OSError as exc:
        emit("netns", ok=False, netns=name, error=str(exc))
        return False
    ok = (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino) and root_ok
    emit("netns", ok=ok, netns=name, inode=mine.st_ino)
    return ok


def serve(args: argparse.Namespace) -> None:
    import trio

    from p2psync.net.mdns import serve_mdns

    def on_found(peer_id: str, addrs: list[str]) -> None:
        emit("found", peer_id=peer_id, addrs=addrs, thread=threading.current_thread().name)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve_mdns(
                    args.peer_id,
                    args.addr,
                    args.network,
                    on_found,
                    interface_ip=args.interface_ip,
                    refresh_interval=args.refresh,
                    task_status=task_status,
                )
            )
            emit("started")
            await trio.sleep(args.seconds)
            nursery.cancel_scope.cancel()
        emit("stopped")

    trio.run(main)


def ptr_txt(args: argparse.Namespace) -> None:
    from zeroconf import IPVersion, Zeroconf
    from zeroconf._dns import DNSPointer, DNSText
    from zeroconf._protocol.outgoing import DNSOutgoing
    from zeroconf.const import _CLASS_IN, _FLAGS_AA, _FLAGS_QR_RESPONSE, _TYPE_PTR, _TYPE_TXT

    from p2psync.net.mdns_records import SERVICE_TYPE, encode_txt

    name = f"{args.instance}.{SERVICE_TYPE}"
    if args.records == "each":
        rdatas = [encode_txt([item]) for item in args.txt]
    else:
        rdatas = [encode_txt(args.txt)]
    zc = Zeroconf(interfaces=[args.interface_ip], ip_version=IPVersion.V4Only)
    try:
        emit("started", name=name)
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
            out.add_answer_at_time(DNSPointer(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN, 120, name), 0)
            for rdata in rdatas:
                # class IN without the cache-flush bit, as js-libp2p sends it
                record = DNSText(name, _TYPE_TXT, _CLASS_IN, 120, rdata)
                if args.section == "answers":
                    out.add_answer_at_time(record, 0)
                else:
                    out.add_additional_answer(record)
            zc.send(out)
            time.sleep(0.5)
    finally:
        zc.close()
    emit("stopped")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["serve", "ptr-txt"])
    ap.add_argument("--netns", required=True, help="namespace we must be running in")
    ap.add_argument("--peer-id", default="")
    ap.add_argument("--addr", action="append", default=[])
    ap.add_argument("--network", default="default")
    ap.add_argument("--interface-ip", default=None)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--refresh", type=float, default=30.0)
    ap.add_argument("--instance", default="js-like-responder")
    ap.add_argument("--txt", action="append", default=[])
    ap.add_argument("--records", choices=["one", "each"], default="each")
    ap.add_argument("--section", choices=["answers", "additionals"], default="answers")
    args = ap.parse_args()
    if not check_netns(args.netns):
        sys.exit(3)  # never send multicast outside the test's namespace
    if args.mode == "serve":
        serve(args)
    else:
        ptr_txt(args)
    emit("done", threads=sorted(t.name for t in threading.enumerate()))


if __name__ == "__main__":
    main()
