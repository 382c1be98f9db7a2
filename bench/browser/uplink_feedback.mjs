// A patient's uplink narrows and widens under a publishing Chromium, for builds of the service
// that differ in how often the SFU sends that publisher transport-wide feedback (docs/adr/0007:
// "revisit with a measurement of a browser publisher's recovery on a shaped uplink"). A
// benchmark, not a test: it prints figures and asserts nothing.
//
//   node bench/browser/uplink_feedback.mjs --binary 50ms=<signaling> --binary 100ms=<signaling> [--runs 3]
//
// Runs alternate between the binaries (A B A B …). The patient's Chromium runs in a network
// namespace; `tc tbf` on the namespace's side of its veth shapes what it sends (its uplink: its
// camera and microphone to the SFU) — a token bucket at the link's rate draining a 250 ms queue,
// as a phone's uplink queues. The clinician's Chromium on the host receives the patient. Sampled
// every 200 ms: the patient's congestion controller's estimate (`availableOutgoingBitrate`) and
// video sent, the round trip its RTCP reports measure (the uplink's queue shows there), and the
// clinician's picture of the patient (frames decoded, width, freezes). Needs root, as the
// browser tests do; CARGO_TARGET_DIR as for them.
import { execFileSync } from "node:child_process";
import { startSignaling, waitFor, admitFirst, clinicianAndNamespacedPatient } from "../../tests/browser/harness.mjs";
import { clientNamespace } from "../../tests/browser/netns.mjs";

const WIDE = "3mbit";
const NARROW = "500kbit";
const NARROW_BPS = 500_000;
const WARM_S = 12;
const NARROW_S = 25;
const BACK_S = 25;

function args() {
  const binaries = [];
  let runs = 3;
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--binary") {
      const [label, bin] = argv[++i].split("=");
      binaries.push({ label, bin });
    } else if (argv[i] === "--runs") {
      runs = Number(argv[++i]);
    } else {
      throw new Error(`unknown argument ${argv[i]}`);
    }
  }
  if (binaries.length === 0) throw new Error("give at least one --binary label=path");
  return { binaries, runs };
}

/** The patient's sending side: video bytes sent, the estimate, the longest RTCP round trip. */
async function sending(page) {
  return page.evaluate(async () => {
    const res = { bytes: 0, estimate: null, rtt: null };
    (await window.hcState.pc.getStats()).forEach((s) => {
      if (s.type === "outbound-rtp" && s.kind === "video") res.bytes += s.bytesSent || 0;
      if (s.type === "candidate-pair" && s.nominated && s.availableOutgoingBitrate !== undefined) {
        res.estimate = s.availableOutgoingBitrate;
      }
      if (s.type === "remote-inbound-rtp" && s.roundTripTime !== undefined) {
        res.rtt = Math.max(res.rtt || 0, s.roundTripTime);
      }
    });
    return res;
  });
}

/** The clinician's picture of the patient. */
async function seen(page) {
  return page.evaluate(async () => {
    const res = { frames: 0, width: 0, frozen: 0 };
    (await window.hcState.pc.getStats()).forEach((s) => {
      if (s.type !== "inbound-rtp" || s.kind !== "video") return;
      res.frames += s.framesDecoded || 0;
      res.width = Math.max(res.width, s.frameWidth || 0);
      res.frozen += s.totalFreezesDuration || 0;
    });
    return res;
  });
}

async function sample(call, seconds) {
  const start = Date.now();
  const out = [];
  while (Date.now() - start < seconds * 1000) {
    const [tx, rx] = await Promise.all([sending(call.patient), seen(call.clinician)]);
    out.push({ t: Date.now() - start, ...tx, ...rx });
    await new Promise((r) => setTimeout(r, 200));
  }
  return out;
}

/** Video bits per second sent over the second before each sample. */
function sendRates(samples) {
  return samples.map((s) => {
    const before = [...samples].reverse().find((p) => p.t <= s.t - 1000);
    return before ? ((s.bytes - before.bytes) * 8 * 1000) / (s.t - before.t) : null;
  });
}

/** The longest time in which the clinician's decoded frame count did not move. */
function longestGap(samples) {
  let gap = 0;
  let since = samples[0].t;
  for (let i = 1; i < samples.length; i++) {
    if (samples[i].frames > samples[i - 1].frames) since = samples[i].t;
    gap = Math.max(gap, samples[i].t - since);
  }
  return gap;
}

async function run({ label, bin }, subnet) {
  const ns = clientNamespace(subnet);
  const [link] = ns.links;
  const tc = (rate) => execFileSync("ip", ["netns", "exec", ns.name, "tc", "qdisc", "replace", "dev", link.nsIf,
    "root", "tbf", "rate", rate, "burst", rate === WIDE ? "3000" : "1600", "latency", "250ms"]);
  let server;
  let call;
  try {
    server = await startSignaling(["--advertise-ip", link.hostIp], { listen: `${link.hostIp}:0`, bin });
    tc(WIDE);
    call = await clinicianAndNamespacedPatient(server, ns);
    await admitFirst(call.clinician);
    await waitFor(async () => {
      const r = await seen(call.clinician).catch(() => null);
      return { ok: r && r.frames > 60 && r.width >= 640, r };
    }, { timeout: 60000, what: "the clinician decoding the patient's top layer" });
    const warm = await sample(call, WARM_S);
    const top = warm[warm.length - 1].width;
    tc(NARROW);
    const narrow = await sample(call, NARROW_S);
    tc(WIDE);
    const back = await sample(call, BACK_S);

    const rates = sendRates(narrow);
    // The send rate fits once the last second's video (audio and RTP overhead come on top) is
    // within the link's rate.
    const fitsAt = narrow.find((s, i) => rates[i] !== null && s.t >= 1000 && rates[i] <= NARROW_BPS);
    const estimateDown = narrow.find((s) => s.estimate !== null && s.estimate <= NARROW_BPS);
    // Twice the narrow link's rate: GCC's ramp-up (≈ 8 % a second) takes longer than the
    // phase to get back to the top layers' 2 Mbit/s.
    const estimateUp = back.find((s) => s.estimate !== null && s.estimate >= 2 * NARROW_BPS);
    const topAgain = back.find((s) => s.width >= top);
    const rtts = narrow.map((s) => s.rtt).filter((r) => r !== null);
    const last = (a) => a[a.length - 1];
    const result = {
      label,
      top,
      warmEstimate: last(warm).estimate,
      estimateDownMs: estimateDown ? estimateDown.t : null,
      sendFitsMs: fitsAt ? fitsAt.t : null,
      rttMaxMs: rtts.length ? Math.round(Math.max(...rtts) * 1000) : null,
      narrowFrames: last(narrow).frames - narrow[0].frames,
      narrowFrozenMs: Math.round((last(narrow).frozen - narrow[0].frozen) * 1000),
      narrowLongestGapMs: longestGap(narrow),
      narrowSentKbps: Math.round(((last(narrow).bytes - narrow.find((s) => s.t >= 5000).bytes) * 8) / (last(narrow).t - narrow.find((s) => s.t >= 5000).t)),
      estimateUpMs: estimateUp ? estimateUp.t : null,
      backEstimateEnd: last(back).estimate,
      topAgainMs: topAgain ? topAgain.t : null,
      backFrozenMs: Math.round((last(back).frozen - back[0].frozen) * 1000),
    };
    console.log(JSON.stringify(result));
    return result;
  } finally {
    if (call) await call.close();
    if (server) server.child.kill("SIGTERM");
    ns.remove();
  }
}

function median(values) {
  const v = values.filter((x) => x !== null).sort((a, b) => a - b);
  if (v.length === 0) return null;
  return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
}

const { binaries, runs } = args();
const results = [];
for (let r = 0; r < runs; r++) {
  for (const b of binaries) results.push(await run(b, 58));
}
const keys = Object.keys(results[0]).filter((k) => k !== "label");
console.log(`\n| figure | ${binaries.map((b) => `${b.label} (median of ${runs}; each run)`).join(" | ")} |`);
console.log(`|---|${binaries.map(() => "---").join("|")}|`);
for (const k of keys) {
  const cells = binaries.map((b) => {
    const vs = results.filter((x) => x.label === b.label).map((x) => x[k]);
    return `${median(vs)} (${vs.join(", ")})`;
  });
  console.log(`| ${k} | ${cells.join(" | ")} |`);
}
