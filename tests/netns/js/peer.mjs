// An independent js-libp2p 2.x node for tests/netns/test_js_libp2p_mdns.py.
//
//   node peer.mjs --ip 10.77.0.2 [--topic /p2psync/default/v4/live]... [--seconds 60]
//                 [--seed <64 hex digits>]    a fixed Ed25519 identity (else a random one)
//
// TCP + Noise + yamux, identify, ping, gossipsub (signed, the js default) and
// @libp2p/mdns with its stock settings but a 1 s query interval. It never
// dials anyone itself (js-libp2p 2.x does not dial discovered peers either):
// p2psync must find it and dial it. It prints one JSON object per line:
//
//   {"event":"started","peer_id":...,"addrs":[...]}
//   {"event":"mdns","peer_id":...,"addrs":[...]}              @libp2p/mdns found a peer
//   {"event":"discovered","peer_id":...,"addrs":[...]}        new in the peer store (mDNS,
//                                                             or a peer that dialed us)
//   {"event":"connected","peer_id":...} / {"event":"disconnected",...}
//   {"event":"subscribed","peer_id":...,"topic":...,"subscribe":bool}
//   {"event":"message","topic":...,"from":...,"version":n,"kind":n,"count":n,"seq":n,"op":{...}}
//   {"event":"stopped"}
//
// A message on a p2psync topic is decoded as far as docs/PROTOCOL.md says:
// [version, kind] then, for LIVE (kind 1), the entry count (u16) and, for the
// run's first entry, its length (u32) and the entry: version, origin (32),
// seq (u64), prev (32), hlc (u64), op length (u16), op JSON, signature.

import './polyfill.mjs'
import { gossipsub } from '@chainsafe/libp2p-gossipsub'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPairFromSeed } from '@libp2p/crypto/keys'
import { identify } from '@libp2p/identify'
import { mdns } from '@libp2p/mdns'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { createLibp2p } from 'libp2p'

function parseArgs (argv) {
  const args = { ip: '0.0.0.0', topics: [], seconds: 120, seed: null }
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]]
    if (flag === '--ip') args.ip = value
    else if (flag === '--topic') args.topics.push(value)
    else if (flag === '--seconds') args.seconds = Number(value)
    else if (flag === '--seed') args.seed = Uint8Array.from(Buffer.from(value, 'hex'))
    else throw new Error(`unknown argument ${flag}`)
  }
  return args
}

function emit (event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + '\n')
}

function decode (data) {
  // Version 4: LIVE is a count (u16), then per entry a length (u32) and the
  // entry. The first entry is decoded; `count` says how many the run holds.
  const out = { version: data[0], kind: data[1] }
  if (data[1] !== 1 || data.length < 2 + 2 + 4 + 83) return out
  const head = new DataView(data.buffer, data.byteOffset, data.byteLength)
  out.count = head.getUint16(2)
  const entry = data.subarray(8, 8 + head.getUint32(4))
  const view = new DataView(entry.buffer, entry.byteOffset, entry.byteLength)
  out.seq = Number(view.getBigUint64(33))
  const length = view.getUint16(81)
  try {
    out.op = JSON.parse(new TextDecoder().decode(entry.subarray(83, 83 + length)))
  } catch (err) {
    out.op_error = String(err)
  }
  return out
}

// @libp2p/mdns as configured, with its own "peer" events reported: libp2p's
// peer:discovery also fires for a peer that merely dialed us.
function reportingMdns (init) {
  const factory = mdns(init)
  return (components) => {
    const service = factory(components)
    service.addEventListener('peer', (evt) => emit('mdns', {
      peer_id: evt.detail.id.toString(),
      addrs: evt.detail.multiaddrs.map((ma) => ma.toString())
    }))
    return service
  }
}

const args = parseArgs(process.argv.slice(2))
const privateKey = args.seed ? await generateKeyPairFromSeed('Ed25519', args.seed) : undefined
const node = await createLibp2p({
  privateKey,
  addresses: { listen: [`/ip4/${args.ip}/tcp/0`] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  peerDiscovery: [reportingMdns({ interval: 1000 })],
  services: {
    identify: identify(),
    ping: ping(),
    pubsub: gossipsub({
      emitSelf: false,
      globalSignaturePolicy: 'StrictSign',
      heartbeatInterval: 1000
    })
  }
})

node.addEventListener('peer:discovery', (evt) => {
  emit('discovered', {
    peer_id: evt.detail.id.toString(),
    addrs: evt.detail.multiaddrs.map((ma) => ma.toString())
  })
})
node.addEventListener('peer:connect', (evt) => emit('connected', { peer_id: evt.detail.toString() }))
node.addEventListener('peer:disconnect', (evt) => emit('disconnected', { peer_id: evt.detail.toString() }))

const pubsub = node.services.pubsub
pubsub.addEventListener('subscription-change', (evt) => {
  for (const sub of evt.detail.subscriptions) {
    emit('subscribed', { peer_id: evt.detail.peerId.toString(), topic: sub.topic, subscribe: sub.subscribe })
  }
})
pubsub.addEventListener('message', (evt) => {
  const msg = evt.detail
  emit('message', {
    topic: msg.topic,
    from: msg.type === 'signed' ? msg.from.toString() : null,
    ...decode(msg.data)
  })
})
for (const topic of args.topics) pubsub.subscribe(topic)

emit('started', {
  peer_id: node.peerId.toString(),
  addrs: node.getMultiaddrs().map((ma) => ma.toString())
})

let stopping = false
async function stop () {
  if (stopping) return
  stopping = true
  await node.stop()
  emit('stopped')
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
setTimeout(stop, args.seconds * 1000)
