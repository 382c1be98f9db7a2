// TURN over TLS on 443: a patient whose network passes nothing but TCP 443 (and the service's
// own port) still gets media, relayed by coturn (Debian's `turnserver`, `use-auth-secret`)
// with the short-lived credentials the service hands out. The patient's Chromium runs in a
// network namespace whose output nft limits to those two TCP ports; the certificate is
// self-signed, made by the test.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { startSignaling, inboundStats, waitFor, admitFirst, selectedPair, clinicianAndNamespacedPatient, mediaConnectTimes } from "./harness.mjs";
import { clientNamespace } from "./netns.mjs";

const SECRET = "turn-secret-shared-with-the-service-01";

test("with only TCP 443 open, a patient's Chromium gets media through coturn over TLS", { timeout: 150000 }, async () => {
  const ns = clientNamespace(48);
  const [net] = ns.links;
  const dir = mkdtempSync(path.join(tmpdir(), "hc-turn-"));
  execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", path.join(dir, "key.pem"), "-out", path.join(dir, "cert.pem"), "-days", "1", "-subj", "/CN=turn.test"],
  { stdio: "ignore" });
  let coturnLog = "";
  const coturn = spawn("turnserver", ["-n", "--no-cli", "--no-dtls", "--no-udp", "--listening-ip", net.hostIp,
    "--tls-listening-port", "443", "--listening-port", "3478", "--relay-ip", net.hostIp,
    "--min-port", "49300", "--max-port", "49400", "--cert", path.join(dir, "cert.pem"), "--pkey", path.join(dir, "key.pem"),
    "--use-auth-secret", "--static-auth-secret", SECRET, "--realm", "video.region.test",
    "--pidfile", path.join(dir, "pid"), "--userdb", path.join(dir, "db"), "--log-file", "stdout", "--simple-log", "-v"],
  { stdio: ["ignore", "pipe", "pipe"] });
  coturn.stdout.on("data", (d) => { coturnLog += d; });
  let server;
  let call;
  try {
    server = await startSignaling(["--advertise-ip", net.hostIp, "--turn-url", `turns:${net.hostIp}:443?transport=tcp`,
      "--turn-secret", SECRET], { listen: `${net.hostIp}:0` });
    const port = new URL(server.base).port;
    // Out of the patient's network: TCP to the service and to 443, nothing else.
    ns.nft(`table inet hc {\n chain out {\n  type filter hook output priority 0; policy drop;\n  oifname "lo" accept\n` +
      `  ip daddr ${net.hostIp} tcp dport { 443, ${port} } accept\n }\n}\n`);
    // Chromium checks the relay's certificate like a web site's; this one is the test's own,
    // self-signed (a region's relay has a real one for its name).
    call = await clinicianAndNamespacedPatient(server, ns, { patientArgs: ["--ignore-certificate-errors"] });
    const { clinician, patient } = call;
    await waitFor(async () => {
      const text = await patient.evaluate(() => document.getElementById("net-check").textContent);
      return { ok: text === "Anslutning: fungerar (via reläserver).", text };
    }, { timeout: 20000, what: "the connectivity check to say 'via reläserver'" });
    await admitFirst(clinician);
    const admittedAt = Date.now();
    const first = await waitFor(async () => {
      const s = await inboundStats(patient);
      return { ok: s && s.video.framesDecoded > 0, at: Date.now() };
    }, { timeout: 30000, interval: 50, what: "the patient's first frame through the relay" }).catch(async (e) => {
      if (process.env.HC_DEBUG) {
        console.log(await patient.evaluate(async () => {
          const pc = window.hcState.pc;
          const out = { servers: window.hcState.iceServers, conf: pc.getConfiguration().iceServers, c: [] };
          (await pc.getStats()).forEach((s) => { if (s.type.endsWith("candidate")) out.c.push([s.type, s.candidateType, s.protocol, s.address, s.port, s.relayProtocol]); });
          return JSON.stringify(out);
        }));
      }
      throw new Error(`${e.message}\ncoturn:\n${coturnLog.slice(-1500)}\nserver:\n${server.logs().slice(-2000)}`);
    });
    for (const [name, page] of [["clinician", clinician], ["patient", patient]]) {
      await waitFor(async () => {
        const s = await inboundStats(page);
        return { ok: s && s.video.framesDecoded > 30 && s.audio.packetsReceived > 20, s };
      }, { timeout: 45000, what: `${name} decoding` });
    }
    const { local } = await selectedPair(patient);
    assert.equal(local.type, "relay", `the patient's media is relayed: ${JSON.stringify(local)}`);
    assert.equal(local.relayProtocol, "tls", "reached over TLS");
    const joined = (await mediaConnectTimes(patient)) || {};
    console.log(`TURN/TLS: media connected ${joined.fromOffer} ms after the offer (${joined.fromLoad} ms after the page loaded, relay allocation included); admit → first frame decoded through the relay in ${first.at - admittedAt} ms`);
    // The credentials were the service's: coturn logged the REST-API username (expiry:id).
    assert.match(coturnLog, /\d{10}:p-/);
  } finally {
    if (call) await call.close();
    if (server) server.child.kill("SIGTERM");
    coturn.kill("SIGTERM");
    ns.remove();
  }
});
