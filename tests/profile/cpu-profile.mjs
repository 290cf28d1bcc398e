// Samples the CPU of the Worker that `wrangler dev` runs (the gateway and
// every Durable Object: one isolate) through its inspector, for a number of
// seconds, then writes the profile (open it in Chrome DevTools' Performance
// panel) and prints where the time went, by function: self time, and time
// including callees. Rust functions keep their names (the Worker's Wasm
// carries its name section).
//
//   node tests/profile/cpu-profile.mjs [--port 9229] [--seconds 15] [--out worker.cpuprofile] [--top 40]
//
// Run the load meanwhile (a bench, curl, a client). `cargo xtask dev` serves
// its inspector on wrangler's default port, 9229. Needs Node 22 or later
// (its built-in WebSocket): `node_modules/.bin/node`, which `cargo xtask
// setup` installs, is one.

import { writeFileSync } from 'node:fs';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, a, i, all) => (a.startsWith('--') ? [...pairs, [a.slice(2), all[i + 1]]] : pairs), []),
);
const port = Number(args.port ?? 9229);
const seconds = Number(args.seconds ?? 15);
const out = args.out ?? 'worker.cpuprofile';
const top = Number(args.top ?? 40);
const INTERVAL_US = 200;

const targets = await (await fetch(`http://127.0.0.1:${port}/json`)).json();
if (!targets.length) throw new Error(`no inspector target on port ${port}`);
// The inspector proxy refuses connections without an Origin.
const ws = new WebSocket(targets[0].webSocketDebuggerUrl, { headers: { Origin: 'http://localhost' } });
const pending = new Map();
let next = 0;
const call = (method, params = {}) =>
  new Promise((resolve, reject) => {
    const id = ++next;
    pending.set(id, { resolve, reject });
    ws.send(JSON.stringify({ id, method, params }));
  });
// wrangler's inspector proxy answers some calls (`Profiler.enable`) by
// echoing them back under their id: any message with the call's id ends it.
ws.onmessage = (m) => {
  const d = JSON.parse(m.data);
  const p = d.id && pending.get(d.id);
  if (!p) return;
  pending.delete(d.id);
  d.error ? p.reject(new Error(JSON.stringify(d.error))) : p.resolve(d.result ?? {});
};
await new Promise((resolve, reject) => {
  ws.onopen = resolve;
  ws.onerror = (e) => reject(new Error(`inspector: ${e.message ?? 'connection failed'}`));
});
await call('Profiler.enable');
await call('Profiler.setSamplingInterval', { interval: INTERVAL_US });
await call('Profiler.start');
console.error(`profiling for ${seconds} s...`);
await new Promise((r) => setTimeout(r, seconds * 1000));
const { profile } = await call('Profiler.stop');
ws.close();
if (!profile) throw new Error('the inspector answered Profiler.stop without a profile');
writeFileSync(out, JSON.stringify(profile));

// Summary by sample counts: a sample's time delta also covers the time the
// isolate was not running, so counts, not deltas, measure CPU. A count is
// turned into ms with the median interval between samples (the runtime
// samples less often than asked: about every 320 µs for 200 here).
const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
const parent = new Map();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const name = (id) => nodes.get(id).callFrame.functionName || '(anonymous)';
const self = new Map();
const total = new Map();
for (const s of profile.samples) {
  self.set(name(s), (self.get(name(s)) ?? 0) + 1);
  const seen = new Set();
  for (let x = s; x !== undefined; x = parent.get(x)) {
    const f = name(x);
    if (!seen.has(f)) total.set(f, (total.get(f) ?? 0) + 1), seen.add(f);
  }
}
const deltas = [...profile.timeDeltas].sort((a, b) => a - b);
const interval = deltas[Math.floor(deltas.length / 2)] ?? INTERVAL_US;
const ms = (count) => ((count * interval) / 1000).toFixed(1).padStart(9);
const pct = (count) => ((100 * count) / profile.samples.length).toFixed(1).padStart(5);
const show = (title, counts) => {
  console.log(`\n${title}\n     ms      %  function`);
  for (const [f, c] of [...counts].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${ms(c)} ${pct(c)}  ${f.slice(0, 150)}`);
};
console.log(`${profile.samples.length} samples, median interval ${interval} µs: ${ms(profile.samples.length).trim()} ms of the isolate running; profile in ${out}`);
show('self time', self);
show('with callees', total);
