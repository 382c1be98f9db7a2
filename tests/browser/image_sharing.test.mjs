// Sharing a photo in real browsers: the patient picks a JPEG that carries EXIF with a GPS
// position; the clinician receives it without EXIF and can save it on their own device; the
// server refuses the same file posted directly, keeps nothing on disk (its working directory
// and temporary directory stay empty), and audits who shared with whom, not the picture.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { withServerAndBrowser, waitFor, admitFirst, linkToken } from "./harness.mjs";

/** `jpeg` with an EXIF block holding a GPS position (59°20'N) inserted after its SOI. */
function withGpsExif(jpeg) {
  const tiff = Buffer.alloc(80);
  tiff.write("MM", 0, "latin1");
  tiff.writeUInt16BE(42, 2);
  tiff.writeUInt32BE(8, 4);
  tiff.writeUInt16BE(1, 8); // IFD0: one entry, the GPS IFD's offset
  tiff.writeUInt16BE(0x8825, 10); tiff.writeUInt16BE(4, 12); tiff.writeUInt32BE(1, 14); tiff.writeUInt32BE(26, 18);
  tiff.writeUInt32BE(0, 22);
  tiff.writeUInt16BE(2, 26); // GPS IFD: latitude reference and latitude
  tiff.writeUInt16BE(1, 28); tiff.writeUInt16BE(2, 30); tiff.writeUInt32BE(2, 32); tiff.write("N\0", 36, "latin1");
  tiff.writeUInt16BE(2, 40); tiff.writeUInt16BE(5, 42); tiff.writeUInt32BE(3, 44); tiff.writeUInt32BE(56, 48);
  tiff.writeUInt32BE(0, 52);
  for (const [i, v] of [59, 20, 0].entries()) { tiff.writeUInt32BE(v, 56 + i * 8); tiff.writeUInt32BE(1, 60 + i * 8); }
  const body = Buffer.concat([Buffer.from("Exif\0\0", "latin1"), tiff]);
  const app1 = Buffer.concat([Buffer.from([0xff, 0xe1, (body.length + 2) >> 8, (body.length + 2) & 0xff]), body]);
  return Buffer.concat([jpeg.subarray(0, 2), app1, jpeg.subarray(2)]);
}

function filesUnder(dir) {
  return readdirSync(dir, { recursive: true });
}

test("a photo with GPS in its EXIF arrives without it, held in memory only", { timeout: 120000 }, async () => {
  const work = mkdtempSync(path.join(tmpdir(), "hc-cwd-"));
  const temp = mkdtempSync(path.join(tmpdir(), "hc-tmp-"));
  await withServerAndBrowser(async ({ server, browser }) => {
    const clinician = await (await browser.newContext({ acceptDownloads: true })).newPage();
    const patient = await (await browser.newContext()).newPage();
    await clinician.goto(server.clinician);
    await patient.goto(server.patient);
    await admitFirst(clinician);
    await waitFor(async () => ({ ok: await patient.evaluate(() => window.hcState.admitted) }),
      { timeout: 20000, what: "the patient admitted" });

    // A camera-like JPEG: drawn in the page, then given an EXIF block with a GPS position.
    const plain = Buffer.from(await patient.evaluate(async () => {
      const c = document.createElement("canvas");
      c.width = 320; c.height = 240;
      const g = c.getContext("2d");
      g.fillStyle = "#c44"; g.fillRect(0, 0, 320, 240); g.fillStyle = "#fc9"; g.fillRect(80, 60, 160, 120);
      const blob = await new Promise((r) => c.toBlob(r, "image/jpeg", 0.9));
      return [...new Uint8Array(await blob.arrayBuffer())];
    }));
    const photo = withGpsExif(plain);
    assert.ok(photo.includes(Buffer.from("Exif\0\0", "latin1")));

    // Posted as it is (a hostile or careless client): refused, and nobody is told.
    const token = linkToken(server.patient);
    const sender = await patient.evaluate(() => window.hcState.participant);
    const post = (body, headers = {}) => fetch(server.base + "/images", { method: "POST", body,
      headers: { authorization: `Bearer ${token}`, "x-participant": sender, "content-type": "image/jpeg", ...headers } });
    let r = await post(photo);
    assert.deepEqual([r.status, (await r.json()).error], [422, "image_has_metadata"]);
    r = await post(Buffer.alloc(9 * 1024 * 1024, 1));
    assert.deepEqual([r.status, (await r.json()).error], [413, "image_too_large"]);
    r = await post(plain, { authorization: "Bearer not-a-token" });
    assert.equal(r.status, 401);

    // Through the page: stripped on the patient's device, received clean by the clinician.
    await patient.setInputFiles("#image-input", { name: "utslag.jpg", mimeType: "image/jpeg", buffer: photo });
    const got = await waitFor(async () => {
      const images = await clinician.evaluate(() => window.hcState.images);
      return { ok: images.length === 1, images };
    }, { timeout: 15000, what: "the clinician receiving the photo" });
    assert.equal(got.images[0].exif, false, "no EXIF reached the clinician");
    assert.equal(got.images[0].from, sender);
    const shown = await clinician.waitForSelector("#chat-log li.photo img");
    await waitFor(async () => ({ ok: (await shown.evaluate((img) => img.naturalWidth)) === 320 }),
      { timeout: 5000, what: "the photo shown at its size" });
    // Colours survive the redraw (it is the same picture).
    const centre = await shown.evaluate((img) => {
      const c = document.createElement("canvas");
      c.width = img.naturalWidth; c.height = img.naturalHeight;
      const g = c.getContext("2d");
      g.drawImage(img, 0, 0);
      return [...g.getImageData(160, 120, 1, 1).data.slice(0, 3)];
    });
    assert.ok(centre[0] > 200 && centre[1] > 150 && centre[2] > 100, `centre ${centre}`);
    assert.equal(await patient.evaluate(() => window.hcState.images.length), 0, "the sender is not sent their own photo");
    // Only its recipients fetch it: not the sender, and not without a token.
    const id = (await patient.evaluate(() => window.hcState.sentImages))[0].id;
    r = await fetch(`${server.base}/images/${id}`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(r.status, 404);
    r = await fetch(`${server.base}/images/${id}`);
    assert.equal(r.status, 401);

    // The clinician saves it on this device; the patient's page offers no such link.
    const [download] = await Promise.all([clinician.waitForEvent("download"), clinician.click("#chat-log a.save-photo")]);
    const saved = readFileSync(await download.path());
    assert.equal(saved.subarray(0, 2).toString("hex"), "ffd8");
    assert.ok(!saved.includes(Buffer.from("Exif\0\0", "latin1")));
    assert.equal(await patient.$$eval("#chat-log a.save-photo", (a) => a.length), 0);
    assert.equal(await patient.$$eval("#chat-log li.photo", (l) => l.length), 1, "the sender sees what they sent");

    // Fetched again and again (a reload, or a flood): one viewing in the audit log.
    const clinicianToken = linkToken(server.clinician);
    for (let i = 0; i < 20; i++) {
      r = await fetch(`${server.base}/images/${id}`, { headers: { authorization: `Bearer ${clinicianToken}` } });
      assert.equal(r.status, 200);
    }
    const viewed = readFileSync(server.auditPath, "utf8").split("\n").filter(Boolean).map(JSON.parse)
      .filter((l) => l.event === "image_viewed");
    assert.equal(viewed.length, 1, "one viewing recorded");
    assert.equal(viewed[0].subject, "dev-clinician");

    // Audited as shared, by whom, with whom — never the picture.
    const shared = readFileSync(server.auditPath, "utf8").split("\n").filter(Boolean).map(JSON.parse)
      .filter((l) => l.event === "image_shared");
    assert.equal(shared.length, 1);
    assert.equal(shared[0].subject, "dev-patient");
    assert.deepEqual(shared[0].recipients, ["dev-clinician"]);
    assert.ok(JSON.stringify(shared[0]).length < 600 && !JSON.stringify(shared[0]).includes("/9j/"));

    // Nothing of it on disk: the server's working and temporary directories stay empty.
    assert.deepEqual(filesUnder(work), []);
    assert.deepEqual(filesUnder(temp), []);
    for (const p of [clinician, patient]) assert.deepEqual(await p.evaluate(() => window.hcState.errors), []);
  }, { options: { cwd: work, env: { TMPDIR: temp } } });
});
