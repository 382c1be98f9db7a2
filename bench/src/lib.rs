//! Benchmark support (the load generator lands with the bench-harness issue).
