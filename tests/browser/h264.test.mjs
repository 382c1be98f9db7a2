// A call forced onto H.264: both Chromium pages remove VP8 (and every other video codec) with
// setCodecPreferences, as a device with only a hardware H.264 encoder would; the SFU forwards
// H.264 both ways and each side decodes it. The page itself is stock: the preference is set by
// the test, around the transceivers the page creates.
import { test } from "node:test";
import assert from "node:assert/strict";
import { startSignaling, launchChromium, inboundStats, waitFor, admitFirst } from "./harness.mjs";

/** Before the page's scripts: every video transceiver it adds prefers H.264 only. */
function forceH264() {
  const add = RTCPeerConnection.prototype.addTransceiver;
  RTCPeerConnection.prototype.addTransceiver = function (trackOrKind, init) {
    const t = add.call(this, trackOrKind, init);
    const kind = typeof trackOrKind === "string" ? trackOrKind : trackOrKind.kind;
    if (kind === "video") {
      const codecs = RTCRtpReceiver.getCapabilities("video").codecs
        .filter((c) => /^video\/(H264|rtx)$/i.test(c.mimeType));
      t.setCodecPreferences(codecs);
    }
    return t;
  };
}

async function videoCodec(page) {
  return page.evaluate(async () => {
    const report = await window.hcState.pc.getStats();
    const out = { in: [], out: [] };
    report.forEach((s) => {
      if ((s.type === "inbound-rtp" || s.type === "outbound-rtp") && s.kind === "video" && s.codecId) {
        const c = report.get(s.codecId);
        (s.type === "inbound-rtp" ? out.in : out.out).push(c && c.mimeType);
      }
    });
    return out;
  });
}

test("a call forced onto H.264 is forwarded and decoded both ways", { timeout: 120000 }, async () => {
  const server = await startSignaling();
  const browser = await launchChromium();
  try {
    const pages = [];
    for (const url of [server.clinician, server.patient]) {
      const ctx = await browser.newContext();
      await ctx.addInitScript(forceH264);
      const page = await ctx.newPage();
      await page.goto(url);
      pages.push(page);
    }
    const [clinician, patient] = pages;
    await admitFirst(clinician);
    for (const [name, page] of [["clinician", clinician], ["patient", patient]]) {
      const got = await waitFor(async () => {
        const s = await inboundStats(page);
        return { ok: s && s.video.framesDecoded > 30, s };
      }, { timeout: 45000, what: `${name} decoding H.264` }).catch(async (e) => {
        throw new Error(`${e.message}\ncodecs: ${JSON.stringify(await videoCodec(page))}\nerrors: ${JSON.stringify(await page.evaluate(() => window.hcState.errors))}`);
      });
      assert.ok(got.s.video.framesDecoded > 30);
      const codecs = await videoCodec(page);
      assert.ok(codecs.in.length > 0 && codecs.in.every((c) => c === "video/H264"), `${name} receives ${codecs.in}`);
      assert.ok(codecs.out.length > 0 && codecs.out.every((c) => c === "video/H264"), `${name} sends ${codecs.out}`);
    }
  } finally {
    await browser.close();
    server.child.kill("SIGTERM");
  }
});
