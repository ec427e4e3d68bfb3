// Node 20 lacks Promise.withResolvers (Node 22 has it), which it-queue (under
// libp2p's peer store) calls; imported first by peer.mjs.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
