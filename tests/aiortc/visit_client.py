"""An independent client of the service, written from docs/protocol.md only, on PyPI's aiortc
(stock: no SDP rewriting). It holds a whole visit against a running single-node service:
waiting room, admit, two-way audio and video, chat, back to the lobby, re-admit, a media restart
(a new peer connection, `restart: true`), and the end of the meeting. Exits non-zero, naming
the step, when anything a person would notice does not happen.

Usage: visit_client.py <clinician join URL> <patient join URL>
"""

import asyncio
import fractions
import json
import os
import sys
import time
from urllib.parse import parse_qs, urlparse

import websockets
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from av import VideoFrame

STEP_TIMEOUT = 30


class Pattern(VideoStreamTrack):
    """A moving test picture, 320x240 at 15 fps."""

    def __init__(self, shade):
        super().__init__()
        self.shade = shade
        self.n = 0

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        self.n += 1
        frame = VideoFrame(width=320, height=240, format="yuv420p")
        for i, plane in enumerate(frame.planes):
            rows = 240 if i == 0 else 120
            fill = self.shade if i == 0 else 128
            data = bytearray([fill]) * (plane.line_size * rows)
            if i == 0:
                x = (self.n * 4) % 320
                for row in range(rows):
                    data[row * plane.line_size + x] = 255
            plane.update(bytes(data))
        frame.pts = pts
        frame.time_base = time_base
        return frame


class Person:
    """One participant: its WebSocket, its peer connection, what it received."""

    def __init__(self, name, url):
        u = urlparse(url)
        # The link carries its token in the fragment (older links: in the query).
        token = (parse_qs(u.fragment).get("token") or parse_qs(u.query)["token"])[0]
        meeting = u.path.rsplit("/", 1)[-1]
        # The token rides in the offered subprotocols, not in the URL a proxy logs.
        self.ws_url = f"ws://{u.netloc}/ws?meeting={meeting}"
        self.protocols = ["hc.v1", f"hc.token.{token}"]
        self.name = name
        self.ws = None
        self.pc = None
        self.ice_servers = []
        self.inbox = asyncio.Queue()
        self.frames = {"video": 0, "audio": 0}
        self.participant = None
        self.reader = None
        self.consumers = []

    async def connect(self):
        self.ws = await websockets.connect(self.ws_url, subprotocols=self.protocols)
        assert self.ws.subprotocol == "hc.v1", self.ws.subprotocol
        self.reader = asyncio.create_task(self._read())

    async def _read(self):
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                if msg["type"] == "ice_servers":
                    self.ice_servers = msg["ice_servers"]
                elif msg["type"] == "offer":
                    await self.answer(msg["sdp"])
                    continue
                elif msg["type"] == "answer":
                    await self.pc.setRemoteDescription(RTCSessionDescription(msg["sdp"], "answer"))
                    continue
                await self.inbox.put(msg)
        except websockets.ConnectionClosed:
            await self.inbox.put({"type": "_closed"})

    async def send(self, msg):
        await self.ws.send(json.dumps(msg))

    async def next_of(self, kind, what=None):
        """The next message of `kind` (others are skipped), or a failure naming `what`."""
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                fail(f"{self.name}: no {kind} ({what or kind})")
            try:
                msg = await asyncio.wait_for(self.inbox.get(), left)
            except asyncio.TimeoutError:
                fail(f"{self.name}: no {kind} ({what or kind})")
            if msg["type"] == "error":
                fail(f"{self.name}: error {msg['code']}: {msg.get('message')}")
            if msg["type"] == kind:
                return msg

    def _consume(self, track):
        async def run():
            while True:
                try:
                    await track.recv()
                except MediaStreamError:
                    return
                self.frames[track.kind] += 1

        self.consumers.append(asyncio.create_task(run()))

    async def start_media(self, restart=False, shade=80):
        if self.pc:
            await self.pc.close()
        from aiortc import RTCConfiguration, RTCIceServer

        servers = [RTCIceServer(**s) for s in self.ice_servers]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self.pc.on("track", self._consume)
        self.pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        self.pc.addTransceiver(Pattern(shade), direction="sendonly")
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        await self.send({"type": "offer", "sdp": self.pc.localDescription.sdp, "restart": restart})

    async def answer(self, sdp):
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        await self.send({"type": "answer", "sdp": self.pc.localDescription.sdp})

    async def receives(self, kind, more, what):
        start = self.frames[kind]
        deadline = time.monotonic() + STEP_TIMEOUT
        while self.frames[kind] < start + more:
            if time.monotonic() > deadline:
                fail(f"{self.name}: {what}: {self.frames[kind] - start} {kind} frames, wanted {more}")
            await asyncio.sleep(0.1)


def fail(why):
    print(f"FAIL: {why}", flush=True)
    # At once: a clean shutdown of the event loop can wait on aiortc's open transports.
    os._exit(1)


def step(text):
    print(f"ok: {text}", flush=True)


async def visit(clinician_url, patient_url):
    doctor = Person("clinician", clinician_url)
    patient = Person("patient", patient_url)
    await doctor.connect()
    welcome = await doctor.next_of("welcome")
    assert welcome["role"] == "clinician", welcome
    offered = time.monotonic()
    await doctor.start_media()
    await doctor.next_of("media_connected")
    took = time.monotonic() - offered
    # On loopback ICE and DTLS take tens of milliseconds; a handshake that had to wait for
    # one of OpenSSL's DTLS retransmissions (the first after 1 s) would take over a second.
    if took > 0.9:
        fail(f"clinician: media connected {took * 1000:.0f} ms after the offer")
    step(f"clinician's media connected {took * 1000:.0f} ms after the offer")
    await patient.connect()
    welcome = await patient.next_of("welcome")
    patient.participant = welcome["participant"]
    if welcome["state"] != "waiting":
        fail(f"patient: welcome state {welcome['state']}, not waiting")
    await patient.start_media()
    step("both joined; the patient waits")

    # The clinician sees the patient in the lobby and admits them.
    while True:
        lobby = await doctor.next_of("lobby")
        if any(w["participant"] == patient.participant for w in lobby["waiting"]):
            break
    # Nothing of the visit reaches the lobby.
    await asyncio.sleep(2)
    if patient.frames["video"] or patient.frames["audio"]:
        fail(f"patient received media while waiting: {patient.frames}")
    await doctor.send({"type": "admit", "participant": patient.participant})
    await patient.next_of("admitted")
    step("admitted")
    await patient.receives("video", 30, "video from the clinician")
    await doctor.receives("video", 30, "video from the patient")
    await patient.receives("audio", 50, "audio from the clinician")
    await doctor.receives("audio", 50, "audio from the patient")
    step("two-way audio and video")

    await doctor.send({"type": "chat", "text": "Hej! Hör du mig?"})
    chat = await patient.next_of("chat")
    if chat["text"] != "Hej! Hör du mig?":
        fail(f"chat text {chat['text']!r}")
    step("chat")

    await doctor.send({"type": "to_lobby", "participant": patient.participant})
    await patient.next_of("returned_to_lobby")
    await asyncio.sleep(2)
    held = patient.frames["video"]
    await asyncio.sleep(2)
    if patient.frames["video"] > held + 2:
        fail("video kept arriving in the lobby")
    step("back in the lobby; media stopped")
    await doctor.send({"type": "admit", "participant": patient.participant})
    await patient.next_of("admitted")
    await patient.receives("video", 30, "video after re-admission")
    await doctor.receives("video", 30, "the patient's video after re-admission")
    step("re-admitted; media again")

    # Two restarts in quick succession, each closing the old peer connection before its offer
    # (the SFU reports that session's transport closed): each starts a new media session, with
    # no `restart_too_soon` — a lost session is replaced at once.
    for n in (1, 2):
        await patient.start_media(restart=True, shade=120 + 40 * n)
        await patient.receives("video", 30, f"video after restart {n}")
        await doctor.receives("video", 30, f"the patient's video after restart {n}")
    step("two media restarts with new peer connections")

    await doctor.send({"type": "end_meeting"})
    closing = await patient.next_of("closing")
    step(f"meeting ended ({closing.get('reason')})")
    for p in (doctor, patient):
        if p.pc:
            await p.pc.close()
        await p.ws.close()


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(visit(sys.argv[1], sys.argv[2]), 240))
    print("PASS", flush=True)
