// Sends records to rin-ship with the real Node client @fluent-org/logger (1.0.x).
// usage: node node_client.js PORT MODE ACK(0|1) COUNT T0
// Emits COUNT records {"i": n, "mode": MODE} with tag "node.<mode>" and EventTime(T0 + n, n*1000);
// prints one JSON line {"ok": n_acked_or_sent, "errors": [...]}.
const { FluentClient, EventTime } = require("@fluent-org/logger");
const [port, mode, ack, count, t0] = process.argv.slice(2);
const opts = {
  eventMode: mode,
  socket: { host: "127.0.0.1", port: Number(port), timeout: 10000 },
  flushInterval: 20,
};
if (ack === "1") opts.ack = { ackTimeout: 10000 };
// Optional, from the environment: shared-key handshake and TLS.
if (process.env.NODE_SHARED_KEY) {
  opts.security = { clientHostname: "node-client", sharedKey: process.env.NODE_SHARED_KEY };
  if (process.env.NODE_USERNAME) {
    opts.security.username = process.env.NODE_USERNAME;
    opts.security.password = process.env.NODE_PASSWORD;
  }
}
if (process.env.NODE_TLS_CA) {
  opts.socket.tls = { ca: require("fs").readFileSync(process.env.NODE_TLS_CA), servername: "localhost" };
}
const client = new FluentClient("node", opts);
const errors = [];
let ok = 0;
client.socketOn && client.socketOn("error", (e) => errors.push("socket: " + String(e)));
// keeps the event loop alive: a promise that never settles must fail, not exit 0 silently
const guard = setTimeout(() => {
  console.log(JSON.stringify({ ok, errors: ["timeout: not all emits settled in 60s"] }));
  process.exit(3);
}, 60000);
(async () => {
  const ps = [];
  for (let n = 0; n < Number(count); n++) {
    const t = new EventTime(Number(t0) + n, n * 1000);
    ps.push(client.emit(mode.toLowerCase(), { i: n, mode: mode, s: "x".repeat(n % 50) }, t)
      .then(() => { ok++; }, (e) => { errors.push(String(e)); }));
  }
  await Promise.all(ps);
  await client.disconnect();
  console.log(JSON.stringify({ ok, errors: errors.slice(0, 5) }));
  process.exit(errors.length ? 1 : 0);
})().catch((e) => { console.log(JSON.stringify({ ok, errors: [String(e)] })); process.exit(2); });
