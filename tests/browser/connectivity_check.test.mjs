// The waiting room's connectivity check: on a network that lets the page load but passes
// nothing to the media (no UDP, no TCP to the SFU, no relay), the patient is told within 10 s
// that video will not work from here and what to do. The patient's Chromium runs in a network
// namespace whose output nft limits to the service's own port.
import { test } from "node:test";
import assert from "node:assert/strict";
import { startSignaling, launchChromium, chromiumBin, waitFor } from "./harness.mjs";
import { clientNamespace } from "./netns.mjs";

test("with nothing open to the media, the waiting room says so within 10 s and what to do", { timeout: 90000 }, async () => {
  const ns = clientNamespace(49);
  const [net] = ns.links;
  let server;
  let browser;
  try {
    server = await startSignaling(["--advertise-ip", net.hostIp], { listen: `${net.hostIp}:0` });
    const port = new URL(server.base).port;
    ns.nft(`table inet hc {\n chain out {\n  type filter hook output priority 0; policy drop;\n  oifname "lo" accept\n` +
      `  ip daddr ${net.hostIp} tcp dport ${port} accept\n }\n}\n`);
    browser = await launchChromium([`--unsafely-treat-insecure-origin-as-secure=${server.base}`],
      { executablePath: ns.wrapper(chromiumBin) });
    const patient = await (await browser.newContext()).newPage();
    await patient.goto(server.patient);
    const verdict = await waitFor(async () => {
      const s = await patient.evaluate(() => ({
        text: document.getElementById("net-check").textContent,
        visible: !document.getElementById("waiting").hidden,
        since: Date.now() - window.hcState.sessionStartedAt,
        ok: window.hcState.connectivityOk,
      }));
      return { ok: s.ok === false, s };
    }, { timeout: 15000, interval: 100, what: "the connectivity check's verdict" });
    console.log(`connectivity check: "nothing works" shown ${verdict.s.since} ms after the media session started`);
    assert.ok(verdict.s.since < 10000, `told after ${verdict.s.since} ms`);
    assert.ok(verdict.s.visible, "on the waiting room's screen");
    assert.match(verdict.s.text, /fungerar inte/);
    assert.match(verdict.s.text, /mobildata/, "says what to do");
  } finally {
    if (browser) await browser.close().catch(() => {});
    if (server) server.child.kill("SIGTERM");
    ns.remove();
  }
});
