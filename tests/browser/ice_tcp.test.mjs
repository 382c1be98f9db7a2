// ICE-TCP: a patient on a network that blocks UDP (hospital guest Wi-Fi) still gets media, over
// TCP to the SFU's worker port (RFC 6544 passive candidate); and a TCP reader that stops
// reading is cut off without the worker's memory growing or the others noticing. The patient's
// Chromium runs in a network namespace whose only way out is one veth pair, UDP dropped by nft.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { startSignaling, launchChromium, chromiumBin, inboundStats, waitFor, admitFirst, bookVisit, metric,
  selectedPair, mediaConnectTimes, clinicianAndNamespacedPatient } from "./harness.mjs";
import { clientNamespace } from "./netns.mjs";

function rssKiB(pid) {
  const m = readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+)/);
  return Number(m[1]);
}

async function setUp(subnet) {
  const ns = clientNamespace(subnet);
  const [net] = ns.links;
  // No UDP leaves the patient's network.
  ns.nft(`table inet hc {\n chain out {\n  type filter hook output priority 0;\n  meta l4proto udp drop\n }\n}\n`);
  const server = await startSignaling(["--advertise-ip", net.hostIp], { listen: `${net.hostIp}:0` });
  const secure = [`--unsafely-treat-insecure-origin-as-secure=${server.base}`];
  return { ns, net, server, secure };
}

test("with UDP blocked, a patient's Chromium connects over ICE-TCP and both sides decode", { timeout: 120000 }, async () => {
  const { ns, server } = await setUp(45);
  let call;
  try {
    call = await clinicianAndNamespacedPatient(server, ns);
    const { clinician, patient } = call;
    // The waiting room's check tells the patient how video will reach them.
    await waitFor(async () => {
      const text = await patient.evaluate(() => document.getElementById("net-check").textContent);
      return { ok: text === "Anslutning: fungerar (via TCP).", text };
    }, { timeout: 15000, what: "the connectivity check to say 'via TCP'" });
    await admitFirst(clinician);
    const admittedAt = Date.now();
    const first = await waitFor(async () => {
      const s = await inboundStats(patient);
      return { ok: s && s.video.framesDecoded > 0, at: Date.now() };
    }, { timeout: 30000, interval: 50, what: "the patient's first frame over TCP" });
    for (const [name, page] of [["clinician", clinician], ["patient", patient]]) {
      await waitFor(async () => {
        const s = await inboundStats(page);
        return { ok: s && s.video.framesDecoded > 30 && s.audio.packetsReceived > 20, s };
      }, { timeout: 45000, what: `${name} decoding` }).catch((e) => {
        throw new Error(`${e.message}\nserver log:\n${server.logs().slice(-3000)}`);
      });
    }
    const pair = await selectedPair(patient);
    assert.equal(pair.local.protocol, "tcp", `the patient's media runs over TCP: ${JSON.stringify(pair)}`);
    assert.equal(pair.remote.protocol, "tcp");
    assert.equal(pair.remote.tcpType, "passive");
    assert.equal((await selectedPair(clinician)).local.protocol, "udp", "the clinician stays on UDP");
    const joined = (await mediaConnectTimes(patient)) || {};
    console.log(`ICE-TCP: media connected ${joined.fromOffer} ms after the offer (${joined.fromLoad} ms after the page loaded); admit → first frame decoded over TCP in ${first.at - admittedAt} ms`);
    assert.ok(await metric(server, "sfu_ice_tcp_accepted_total") >= 1);
  } finally {
    if (call) await call.close();
    server.child.kill("SIGTERM");
    ns.remove();
  }
});

test("a TCP reader that stops reading is closed, the worker's memory stays bounded and the others' call goes on", { timeout: 150000 }, async () => {
  const { ns, server, secure } = await setUp(46);
  // A phone's receive window, not a server's: the stall reaches the SFU's queue in seconds.
  execFileSync("ip", ["netns", "exec", ns.name, "sysctl", "-qw", "net.ipv4.tcp_rmem=4096 65536 131072"]);
  const browsers = [];
  let stopped = [];
  try {
    const { links } = await bookVisit(server, {
      clinician: { sub: "doc-45", name: "Dr Cecilia Berg", role: "clinician", hsa: "SE2321000016-C45" },
      relative: { sub: "rel-46", name: "Bo Anhörig", role: "companion" },
      patient: { sub: "pat-47", name: "Anna Patient", role: "patient" },
    });
    const host = await launchChromium(secure);
    browsers.push(host);
    const inNs = await launchChromium(secure, { executablePath: ns.wrapper(chromiumBin) });
    browsers.push(inNs);
    const clinician = await (await host.newContext()).newPage();
    const relative = await (await host.newContext()).newPage();
    const patient = await (await inNs.newContext()).newPage();
    await clinician.goto(links.clinician);
    await relative.goto(links.relative);
    await admitFirst(clinician);
    await patient.goto(links.patient);
    await admitFirst(clinician);
    await waitFor(async () => {
      const s = await inboundStats(patient);
      return { ok: s && s.video.framesDecoded > 60, s };
    }, { timeout: 45000, what: "the patient decoding both others over TCP" });
    assert.equal((await selectedPair(patient)).local.protocol, "tcp");
    const rssBefore = rssKiB(server.child.pid);

    // The patient's browser freezes (every process in its namespace stops): its TCP
    // connection stops reading.
    stopped = execFileSync("ip", ["netns", "pids", ns.name], { encoding: "utf8" }).split("\n").filter(Boolean);
    for (const pid of stopped) { try { process.kill(Number(pid), "SIGSTOP"); } catch { /* gone */ } }
    const relFrames = (await inboundStats(relative)).video.framesDecoded;
    const docFrames = (await inboundStats(clinician)).video.framesDecoded;
    const closed = await waitFor(async () => ({
      ok: await metric(server, "sfu_ice_tcp_closed_slow_total") >= 1,
      dropped: await metric(server, "sfu_ice_tcp_media_dropped_total"),
      rss: rssKiB(server.child.pid),
    }), { timeout: 30000, interval: 500, what: "the SFU to close the stalled connection" });
    const rssAfter = rssKiB(server.child.pid);
    console.log(`stalled TCP reader: closed, ${closed.dropped} media packets dropped, RSS ${rssBefore} → ${rssAfter} KiB`);
    assert.ok(closed.dropped > 0, "media was dropped, not queued without bound");
    assert.ok(rssAfter - rssBefore < 32 * 1024, `the service grew by ${rssAfter - rssBefore} KiB`);
    // The clinician and the relative kept seeing each other throughout.
    const rel = await inboundStats(relative);
    const doc = await inboundStats(clinician);
    assert.ok(rel.video.framesDecoded > relFrames + 60, `relative decoded ${rel.video.framesDecoded - relFrames} frames meanwhile`);
    assert.ok(doc.video.framesDecoded > docFrames + 60, `clinician decoded ${doc.video.framesDecoded - docFrames} frames meanwhile`);
    assert.equal(await clinician.evaluate(() => window.hcState.pc.connectionState), "connected");
  } finally {
    for (const pid of stopped) { try { process.kill(Number(pid), "SIGCONT"); } catch { /* gone */ } }
    for (const b of browsers) await b.close().catch(() => {});
    server.child.kill("SIGTERM");
    ns.remove();
  }
});
