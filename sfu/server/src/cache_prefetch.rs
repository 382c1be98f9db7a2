//! The prefetch instruction the core's [`sfu_core::Sfu::prefetch_batch`] is given: the core
//! names the lines, and the `unsafe` stays here in the I/O layer.

/// Asks the CPU to bring the cache line holding `addr` toward the core (a hint: it may be
/// ignored, and never faults).
#[inline(always)]
pub fn prefetch_line(addr: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 reads nothing into the program and cannot fault, whatever the
    // address (SSE, which it needs, is part of x86_64).
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(addr.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}
