//! A binary that takes `huge_page_heap!` (as `signaling` and `sfu` do) has jemalloc as its
//! allocator asking for huge pages, and where the kernel gives them to those that ask, the
//! state it allocates in participant-sized pieces lands on them.

use sfu_server::huge_page_heap::HeapPages;

sfu_server::huge_page_heap!();

/// This process's anonymous memory on huge pages, KiB.
fn anon_huge_kib() -> u64 {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").expect("smaps_rollup");
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("AnonHugePages in smaps_rollup")
}

#[test]
fn the_heap_asks_for_huge_pages_and_gets_them() {
    let pages = HeapPages::read();
    if pages.jemalloc_thp.as_deref() == Some("not supported") {
        eprintln!("this kernel has no transparent huge pages ({pages:?}); nothing to check");
        return;
    }
    assert_eq!(
        pages.jemalloc_thp.as_deref(),
        Some("always"),
        "jemalloc was not given the compiled-in options: {pages:?}"
    );
    if !pages.huge() {
        eprintln!("the kernel gives no huge pages here ({pages:?}); nothing more to check");
        return;
    }
    let before = anon_huge_kib();
    // 200 repair caches' worth (350 KiB each, as a simulcast publisher's top layer), written.
    let caches: Vec<Vec<u8>> = (0..200).map(|i| vec![i as u8 | 1; 350 * 1024]).collect();
    let after = anon_huge_kib();
    let allocated_kib = (caches.len() * 350) as u64;
    assert!(
        after.saturating_sub(before) >= allocated_kib / 2,
        "of {allocated_kib} KiB written, {} KiB landed on huge pages",
        after.saturating_sub(before)
    );
    assert!(caches.iter().all(|c| c[0] == c[c.len() - 1]));
}
