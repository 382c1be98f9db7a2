// A patient whose phone's downlink narrows and widens during a visit. The patient's Chromium
// runs in a network namespace; what the host sends it (its downlink: the SFU's media, the
// service's WebSocket) passes `tc tbf` on the host side of its veth — a token bucket at the
// link's rate draining a 250 ms queue, as a cellular link queues. What is asserted is what the
// patient sees and hears, from their browser's own statistics, sampled every 250 ms: the
// width of the picture, frames decoded, freezes, audio packets lost, the jitter buffer, and
// the notice on the picture when the SFU pauses it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { startSignaling, waitFor, admitFirst, clinicianAndNamespacedPatient, metric } from "./harness.mjs";
import { clientNamespace } from "./netns.mjs";

/** The patient's received media, summed per kind. */
async function received(page) {
  return page.evaluate(async () => {
    const res = {
      width: 0, frames: 0, freezes: 0, frozen: 0, jitterDelay: 0, jitterCount: 0,
      audioReceived: 0, audioLost: 0, paused: window.hcState.pausedVideo.size,
      notice: !!document.querySelector("#grid .tile .paused"),
    };
    (await window.hcState.pc.getStats()).forEach((s) => {
      if (s.type !== "inbound-rtp") return;
      if (s.kind === "video") {
        res.width = Math.max(res.width, s.frameWidth || 0);
        res.frames += s.framesDecoded || 0;
        res.freezes += s.freezeCount || 0;
        res.frozen += s.totalFreezesDuration || 0;
        res.jitterDelay += s.jitterBufferDelay || 0;
        res.jitterCount += s.jitterBufferEmittedCount || 0;
      } else if (s.kind === "audio") {
        res.audioReceived += s.packetsReceived || 0;
        res.audioLost += s.packetsLost || 0;
      }
    });
    return res;
  });
}

/** The SFU's estimate, probe and layer lines from the service's log, without colour codes. */
function bweLines(server) {
  return server.logs().replace(/\x1b\[[0-9;]*m/g, "").split("\n")
    .filter((l) => /estimate down|probe settled|step up failed|video layer|video paused/.test(l))
    .map((l) => l.replace(/^\S+Z\s+DEBUG\s+\S+: /, (m) => m.slice(11, 23) + " "))
    .join("\n");
}

test("a patient's shaped downlink: the top layer at 3 Mbit/s, a lower one within 3 s at 400 kbit/s, audio through 250 kbit/s, and back to the top", { timeout: 240000 }, async () => {
  const ns = clientNamespace(53);
  const [link] = ns.links;
  // The bucket holds little more than a packet (a few ms at the rate): a link's pace, not a
  // policer's allowance, so a short burst cannot pass faster than the link.
  const shape = (rate) => execFileSync("tc", ["qdisc", "replace", "dev", link.hostIf, "root", "tbf", "rate", rate,
    "burst", rate === "3mbit" ? "3000" : "1600", "latency", "250ms"]);
  let server;
  let call;
  try {
    // The SFU's estimate and layer decisions at debug: what a failure here is read from.
    server = await startSignaling(["--advertise-ip", link.hostIp], {
      listen: `${link.hostIp}:0`,
      env: { RUST_LOG: "info,sfu_core::sfu::feedback=debug,sfu_core::sfu::layers=debug" },
    });
    shape("3mbit");
    call = await clinicianAndNamespacedPatient(server, ns);
    const { clinician, patient } = call;
    await admitFirst(clinician);
    await waitFor(async () => {
      const r = await received(patient).catch(() => null);
      return { ok: r && r.frames > 60 && r.width > 0, r };
    }, { timeout: 45000, what: "the patient decoding" });

    // Samples through one phase of the schedule: [t ms since it began, received(), …].
    const counts = async () => {
      const names = ["probe_clusters", "probe_packets_out", "transport_feedback_in", "layer_bandwidth_downgrades", "video_pauses", "retransmissions_out"];
      const values = await Promise.all(names.map((n) => metric(server, `sfu_${n}_total`)));
      return names.map((n, i) => `${n} ${values[i]}`).join(", ");
    };
    const phase = async (rate, seconds) => {
      if (rate) shape(rate);
      console.log(`# SFU counters before ${rate || "the first phase"}: ${await counts()}`);
      const start = Date.now();
      const samples = [];
      while (Date.now() - start < seconds * 1000) {
        samples.push([Date.now() - start, await received(patient)]);
        await new Promise((r) => setTimeout(r, 250));
      }
      return samples;
    };
    const delta = (samples, from, to, key) => {
      const a = samples.find(([t]) => t >= from) || samples[samples.length - 1];
      const b = [...samples].reverse().find(([t]) => t <= to) || samples[samples.length - 1];
      return b[1][key] - a[1][key];
    };
    // Seconds (whole, from `from` on) in which no frame was decoded and no pause was shown:
    // a picture that froze while the patient was told nothing.
    const silentSeconds = (samples, from) => {
      const bad = [];
      const end = samples[samples.length - 1][0];
      for (let s = from; s + 1000 <= end; s += 1000) {
        const frames = delta(samples, s, s + 1000, "frames");
        const told = samples.some(([t, r]) => t >= s && t <= s + 1000 && r.notice);
        if (frames <= 0 && !told) bad.push(s / 1000);
      }
      return bad;
    };
    const jitterMs = (samples, from, to) => {
      const d = delta(samples, from, to, "jitterDelay");
      const n = delta(samples, from, to, "jitterCount");
      return n > 0 ? Math.round((d / n) * 1000) : null;
    };
    const widthsOf = (samples) => samples.map(([t, r]) => `${(t / 1000).toFixed(1)}:${r.paused ? "paused" : r.width}`).join(" ");
    // Frames decoded in each whole second (a lower frame rate shows here, not in the width).
    const fpsOf = (samples) => {
      const end = samples[samples.length - 1][0];
      const out = [];
      for (let s = 0; s + 1000 <= end; s += 1000) out.push(delta(samples, s, s + 1000, "frames"));
      return out.join(" ");
    };

    const wide = await phase(null, 8);
    const top = wide[wide.length - 1][1].width;
    assert.ok(top >= 640, `the top layer on 3 Mbit/s (${top} px wide)`);

    const narrow = await phase("400kbit", 20);
    const down = narrow.find(([, r]) => r.width < top || r.paused);
    console.log(`# 400 kbit/s: ${widthsOf(narrow)}; frames per second ${fpsOf(narrow)}; jitter buffer ${jitterMs(narrow, 10000, 20000)} ms`);
    assert.ok(down && down[0] <= 3000, `a lower layer within 3 s (at ${down && down[0]} ms)`);
    assert.deepEqual(silentSeconds(narrow, 3000), [], "frames decoded every second after the move (or the pause shown)");
    // Once down, it stays down: a picture that goes back up on a link that cannot carry it
    // comes down again a second later (probes that read a token bucket's saved-up burst as
    // headroom did that every few seconds).
    const upAgain = narrow.filter(([t, r]) => t > down[0] && r.width >= top && !r.paused);
    assert.deepEqual(upAgain.map(([t]) => t), [], "no move back up on the narrow link");

    const weak = await phase("250kbit", 20);
    const audioLost = delta(weak, 3000, 20000, "audioLost");
    const audioReceived = delta(weak, 3000, 20000, "audioReceived");
    const audioLoss = audioLost / Math.max(1, audioLost + audioReceived);
    const paused = weak.some(([, r]) => r.notice);
    console.log(`# 250 kbit/s: ${widthsOf(weak)}; frames per second ${fpsOf(weak)}; audio lost ${audioLost} of ${audioLost + audioReceived}; paused ${paused}`);
    assert.ok(audioLoss < 0.01, `audio loss ${(audioLoss * 100).toFixed(2)} % at 250 kbit/s`);
    assert.deepEqual(silentSeconds(weak, 3000), [], "the picture moves or the patient is told it is paused, never silently frozen");

    const back = await phase("3mbit", 25);
    const upAt = back.find(([, r]) => r.width >= top && !r.paused);
    const jitterEnd = jitterMs(back, 20000, 25000);
    const jitterNarrow = jitterMs(narrow, 10000, 20000);
    console.log(`# back to 3 Mbit/s: ${widthsOf(back)}; top again at ${upAt && upAt[0]} ms; jitter buffer ${jitterEnd} ms (was ${jitterNarrow} ms at 400 kbit/s); freezes ${back[back.length - 1][1].freezes}`);
    assert.ok(upAt && upAt[0] <= 15000, `back on the top layer (at ${upAt && upAt[0]} ms)`);
    assert.ok(back.slice(-8).every(([, r]) => r.width >= top && !r.paused), "and stays there");
    // The jitter buffer comes back down: it grew to ~550 ms and stayed there after the link
    // recovered before bandwidth estimation (and once, 594 ms, in a CI run before the pacer
    // and the unblock fix: docs/bwe.md, "Where it falls short"); 87–174 ms in the runs since.
    assert.ok(jitterEnd !== null, "video frames left the jitter buffer at the end");
    assert.ok(jitterEnd < 400, `the jitter buffer came back down after the link recovered (${jitterEnd} ms)`);
    assert.deepEqual(await patient.evaluate(() => window.hcState.errors), []);
  } catch (e) {
    // What each page saw of its connections (a socket given up for silent, an ICE restart, a
    // stalled media path), for a failure that is not the link's.
    for (const [who, page] of call ? [["clinician", call.clinician], ["patient", call.patient]] : []) {
      const seen = await page.evaluate(() => ({
        view: window.hcState.view, ice: window.hcState.iceStates, pathStalls: window.hcState.pathStalls,
        iceRestarts: window.hcState.iceRestarts, restarts: window.hcState.restarts, resumes: window.hcState.resumes,
        socketRtt: window.hcState.socketRtt, errors: window.hcState.errors,
      })).catch((err) => String(err));
      e.message += `\n${who}: ${JSON.stringify(seen)}`;
    }
    if (server) e.message += `\nserver log:\n${server.logs().slice(-3000)}\nestimate and layers:\n${bweLines(server)}`;
    throw e;
  } finally {
    if (server && process.env.HC_BWE_LOG) console.log(`# estimate and layers:\n${bweLines(server).replace(/^/gm, "# ")}`);
    if (call) await call.close();
    if (server) server.child.kill("SIGTERM");
    ns.remove();
  }
});
