//! The process heap on transparent huge pages, where the kernel gives them.
//!
//! At hundreds of participants a forwarded packet touches state spread over a few hundred MiB
//! (each participant's keys, streams, repair cache, send history), and on 4 KiB pages most of
//! those first touches miss the TLB as well as the cache — dearer still under a hypervisor's
//! nested paging, where regions run. jemalloc asked to `madvise(MADV_HUGEPAGE)` its mappings
//! (`thp:always`) cut the worker's CPU per forwarded packet at 150 visits by about 3 % for
//! about 10 % more memory per participant (docs/benchmarks.md, "The heap on huge pages").
//!
//! A binary takes it with [`huge_page_heap!`](crate::huge_page_heap!) at its root. jemalloc
//! reads its options before `main`; `_RJEM_MALLOC_CONF` in the environment overrides them
//! (`thp:default` leaves the heap to the kernel's default, docs/deployment.md).

use std::ffi::{CStr, c_char};

pub use tikv_jemallocator::Jemalloc;

/// jemalloc's options as compiled into the binaries.
pub const MALLOC_CONF: &CStr = c"thp:always,metadata_thp:auto";

/// A C string pointer jemalloc reads as its `malloc_conf` (a `const char *`).
#[repr(transparent)]
pub struct MallocConf(*const c_char);

impl MallocConf {
    pub const fn new(conf: &'static CStr) -> Self {
        Self(conf.as_ptr())
    }
}

// SAFETY: the pointer is to a `'static` string that nothing ever writes; jemalloc only reads it.
unsafe impl Sync for MallocConf {}

/// Makes jemalloc, with [`MALLOC_CONF`](crate::huge_page_heap::MALLOC_CONF), the binary's
/// allocator. Invoke it once, at the root of a binary crate.
#[macro_export]
macro_rules! huge_page_heap {
    () => {
        #[global_allocator]
        static GLOBAL_ALLOCATOR: $crate::huge_page_heap::Jemalloc =
            $crate::huge_page_heap::Jemalloc;

        // SAFETY: jemalloc (built with the `_rjem_` prefix) declares `_rjem_malloc_conf` as a
        // weak `const char *` and reads it once, before `main`; this is that symbol, a pointer
        // to a NUL-terminated `'static` string, and nothing else in the process defines it.
        #[unsafe(export_name = "_rjem_malloc_conf")]
        static JEMALLOC_CONF: $crate::huge_page_heap::MallocConf =
            $crate::huge_page_heap::MallocConf::new($crate::huge_page_heap::MALLOC_CONF);
    };
}

/// What the heap was given, for the start-up log and the tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeapPages {
    /// jemalloc's `opt.thp` (`always`, `default`, `never`, or `not supported` where the kernel
    /// has no transparent huge pages); `None` if it could not be read.
    pub jemalloc_thp: Option<String>,
    /// The kernel's mode, the bracketed word of
    /// `/sys/kernel/mm/transparent_hugepage/enabled` (`always`, `madvise` or `never`).
    pub kernel_mode: Option<String>,
}

impl HeapPages {
    pub fn read() -> Self {
        Self {
            jemalloc_thp: jemalloc_thp(),
            kernel_mode: std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
                .ok()
                .and_then(|s| kernel_mode(&s)),
        }
    }

    /// Whether the heap can be on huge pages: jemalloc asks for them and the kernel gives them
    /// to those that ask.
    pub fn huge(&self) -> bool {
        self.jemalloc_thp.as_deref() == Some("always")
            && matches!(self.kernel_mode.as_deref(), Some("always" | "madvise"))
    }

    /// Logs what the heap was given: a warning where it stays on 4 KiB pages.
    pub fn log(&self) {
        let jemalloc = self.jemalloc_thp.as_deref().unwrap_or("unknown");
        let kernel = self.kernel_mode.as_deref().unwrap_or("unknown");
        if self.huge() {
            tracing::info!(
                jemalloc_thp = jemalloc,
                kernel_thp = kernel,
                "heap on huge pages"
            );
        } else {
            tracing::warn!(
                jemalloc_thp = jemalloc,
                kernel_thp = kernel,
                "heap on 4 KiB pages: forwarding costs more CPU per packet (docs/deployment.md, \
                 \"Huge pages\")"
            );
        }
    }
}

fn jemalloc_thp() -> Option<String> {
    // SAFETY: `opt.thp` is a read-only option whose value is a `const char *` to a
    // NUL-terminated string jemalloc keeps for the life of the process.
    unsafe {
        let value = tikv_jemalloc_ctl::raw::read::<*const c_char>(b"opt.thp\0").ok()?;
        if value.is_null() {
            return None;
        }
        Some(CStr::from_ptr(value).to_string_lossy().into_owned())
    }
}

/// The bracketed word of the kernel's `always [madvise] never`.
fn kernel_mode(enabled: &str) -> Option<String> {
    let start = enabled.find('[')? + 1;
    let end = start + enabled[start..].find(']')?;
    Some(enabled[start..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_mode_is_the_bracketed_word() {
        assert_eq!(
            kernel_mode("always [madvise] never\n").as_deref(),
            Some("madvise")
        );
        assert_eq!(
            kernel_mode("[always] madvise never").as_deref(),
            Some("always")
        );
        assert_eq!(kernel_mode("always madvise never"), None);
    }

    #[test]
    fn huge_needs_both_jemalloc_and_the_kernel() {
        let pages = |j: &str, k: &str| HeapPages {
            jemalloc_thp: Some(j.into()),
            kernel_mode: Some(k.into()),
        };
        assert!(pages("always", "madvise").huge());
        assert!(pages("always", "always").huge());
        assert!(!pages("always", "never").huge());
        assert!(!pages("default", "madvise").huge());
    }
}
