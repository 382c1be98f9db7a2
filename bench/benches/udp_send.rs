//! What a worker's send costs the kernel per datagram on loopback, with and without UDP GSO,
//! by how long the runs to one destination are: 1 (a broadcast's one packet to each viewer),
//! 2–3 (a video frame to one subscriber), 8 (a keyframe burst).
//!
//! Timed in the sending thread's own CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall time: on
//! this shared VM the hypervisor's steal would otherwise be most of the difference. On
//! loopback the sender's system call also delivers into the receiving sockets (and, with
//! GSO, cuts the message into datagrams again for them: receivers here read without GRO, as
//! browsers do), so this is the whole kernel path a datagram takes on one machine.
//!
//! Run: `cargo bench -p bench --bench udp_send`. Figures go to docs/benchmarks.md.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sfu_core::TransmitBatch;
use sfu_server::udp_batch::UdpBatch;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const BATCH: usize = 64;

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A batch of [`BATCH`] datagrams in runs of `run` to each destination, interleaved across
/// destinations as a fan-out writes them (packet 1 to everyone, then packet 2, …): equal
/// sizes but for a shorter last one in each run, as a frame is packetized.
fn batch(dests: &[SocketAddr], run: usize) -> TransmitBatch {
    let mut b = TransmitBatch::with_capacity(BATCH);
    let destinations = BATCH / run;
    for k in 0..run {
        for d in dests.iter().take(destinations) {
            let len = if k + 1 == run && run > 1 { 700 } else { 1_100 };
            b.push(*d, &vec![0x80; len]);
        }
    }
    b
}

fn udp_send(c: &mut Criterion) {
    let receivers: Vec<UdpSocket> = (0..BATCH)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind a receiver");
            s.set_nonblocking(true).expect("nonblocking");
            // Room for a burst between drains: a full queue drops datagrams before the
            // wake-up, which would make sending look cheaper than it is.
            let size: libc::c_int = 4 << 20;
            // SAFETY: a valid socket and an int-sized option value that outlives the call.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            s
        })
        .collect();
    let dests: Vec<SocketAddr> = receivers.iter().map(|s| s.local_addr().unwrap()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let drainer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                let mut got = 0;
                for s in &receivers {
                    while s.recv(&mut buf).is_ok() {
                        got += 1;
                    }
                }
                if got == 0 {
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        })
    };
    let mut group = c.benchmark_group("udp_send_cpu");
    group.throughput(Throughput::Elements(BATCH as u64));
    for run in [1usize, 2, 3, 8] {
        let b = batch(&dests, run);
        for gso in [false, true] {
            let mut socket = UdpBatch::bind("127.0.0.1:0".parse().unwrap()).expect("bind");
            if gso {
                assert!(socket.enable_gso(), "UDP GSO on this kernel");
            }
            let name = format!("runs_of_{run}/{}", if gso { "gso" } else { "sendmmsg" });
            group.bench_function(name, |bench| {
                bench.iter_custom(|iters| {
                    let start = thread_cpu();
                    for _ in 0..iters {
                        socket.send_batch(&b);
                    }
                    thread_cpu() - start
                })
            });
            if gso && run > 1 {
                assert!(socket.calls.gso_datagrams > 0, "runs of {run} went as GSO");
            }
        }
    }
    group.finish();
    stop.store(true, Ordering::Relaxed);
    drainer.join().expect("drainer");
}

criterion_group!(benches, udp_send);
criterion_main!(benches);
