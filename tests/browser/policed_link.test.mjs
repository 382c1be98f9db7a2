// A patient whose mobile plan polices its downlink: a rate limit (400 kbit/s) that passes a
// burst of 16 KB at once and drops whatever exceeds it, with no queue (nft's `limit … burst`
// on the way into the patient's network namespace). A probe passes such a bucket whole and
// reads a rate the link cannot carry; a step up taken on it fails. What is asserted is what
// the patient sees, from their browser's own statistics every 250 ms: the picture goes down to
// what the link carries, goes back up seldom, and each failed try costs no long freeze.
import { test } from "node:test";
import assert from "node:assert/strict";
import { startSignaling, waitFor, admitFirst, clinicianAndNamespacedPatient, metric } from "./harness.mjs";
import { clientNamespace } from "./netns.mjs";

async function received(page) {
  return page.evaluate(async () => {
    const res = { width: 0, frames: 0, freezes: 0, frozen: 0, bytes: 0 };
    (await window.hcState.pc.getStats()).forEach((s) => {
      if (s.type !== "inbound-rtp" || s.kind !== "video") return;
      res.bytes += s.bytesReceived || 0;
      res.width = Math.max(res.width, s.frameWidth || 0);
      res.frames += s.framesDecoded || 0;
      res.freezes += s.freezeCount || 0;
      res.frozen += s.totalFreezesDuration || 0;
    });
    return res;
  });
}

test("behind a policer: a lower layer, few tries back up, and no long freeze for them", { timeout: 180000 }, async () => {
  const ns = clientNamespace(54);
  const [link] = ns.links;
  let server;
  let call;
  try {
    server = await startSignaling(["--advertise-ip", link.hostIp], { listen: `${link.hostIp}:0` });
    call = await clinicianAndNamespacedPatient(server, ns);
    const { clinician, patient } = call;
    await admitFirst(clinician);
    await waitFor(async () => {
      const r = await received(patient).catch(() => null);
      return { ok: r && r.frames > 60 && r.width >= 640, r };
    }, { timeout: 45000, what: "the patient decoding the top layer" });
    // How far the top layer's rate is over the policer's decides how soon loss tells: the
    // same policer drops a fifth of a 500 kbit/s layer but a tenth of a 440 kbit/s one (a
    // slower machine's encoder), which loss-based control holds at and repairs.
    const rateFrom = await received(patient);
    await new Promise((r) => setTimeout(r, 2000));
    const topKbps = Math.round(((await received(patient)).bytes - rateFrom.bytes) * 8 / 2000);

    ns.nft(`table inet hcpolicer {\n chain in {\n  type filter hook input priority 0;\n` +
      `  iifname "${link.nsIf}" limit rate over 50 kbytes/second burst 16000 bytes drop\n }\n}\n`);
    const failedBefore = await metric(server, "sfu_failed_steps_total");
    const unrepairedBefore = await metric(server, "sfu_keyframes_for_failed_repairs_total");
    const start = Date.now();
    const samples = [];
    while (Date.now() - start < 40000) {
      samples.push([Date.now() - start, await received(patient)]);
      await new Promise((r) => setTimeout(r, 250));
    }
    const failed = (await metric(server, "sfu_failed_steps_total")) - failedBefore;
    const unrepaired = (await metric(server, "sfu_keyframes_for_failed_repairs_total")) - unrepairedBefore;
    const widths = samples.map(([t, r]) => `${(t / 1000).toFixed(1)}:${r.width}/${Math.round(r.frozen * 1000)}`).join(" ");
    console.log(`# policed at 400 kbit/s, 16 KB burst, the top layer at ${topKbps} kbit/s before (time s: ` +
      `width px/ms frozen in all): ${widths}; ${failed} failed steps taken back, ` +
      `${unrepaired} keyframes asked for losses no resend mended`);
    const down = samples.find(([, r]) => r.width < 640);
    // Until the move down the patient's picture is what tells: loss repaired, no freeze.
    const frozenBefore = Math.round(((down ? down[1] : samples[samples.length - 1][1]).frozen - samples[0][1].frozen) * 1000);
    assert.ok(frozenBefore < 1000, `${frozenBefore} ms frozen on the top layer behind the policer`);
    // (The bucket carries the top layer for a few seconds before it drops enough to tell: 4.9
    // to 10.6 s seen, the later the closer the layer's rate is to the policer's.)
    assert.ok(down && down[0] <= 20000, `a lower layer within 20 s (at ${down && down[0]} ms)`);
    // Judged from 2 s after the move down.
    const after = samples.filter(([t]) => t >= down[0] + 2000);
    let stepsUp = 0;
    for (let i = 1; i < after.length; i++) {
      if (after[i][1].width >= 640 && after[i - 1][1].width < 640) stepsUp += 1;
    }
    const first = after[0][1];
    const last = after[after.length - 1][1];
    const frozenMs = Math.round((last.frozen - first.frozen) * 1000);
    const freezes = last.freezes - first.freezes;
    console.log(`# after the move down: ${stepsUp} steps back up, ${freezes} freezes, ${frozenMs} ms frozen in ` +
      `${Math.round((after[after.length - 1][0] - after[0][0]) / 1000)} s`);
    assert.ok(stepsUp <= 3, `${stepsUp} steps back up to 640 px`);
    assert.ok(frozenMs < 2000, `${frozenMs} ms frozen (${freezes} freezes)`);
    assert.deepEqual(await patient.evaluate(() => window.hcState.errors), []);
  } finally {
    if (call) await call.close();
    if (server) server.child.kill("SIGTERM");
    ns.remove();
  }
});
