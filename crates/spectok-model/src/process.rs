//! Process-wide settings for spectok's binaries: call [`configure`] first
//! thing in `main`, before any thread starts.

/// Applies spectok's process settings; each one the user already set in
/// the environment is left alone.
///
/// - candle's own CPU worker pool is kept to the calling thread
///   (`CANDLE_NUM_THREADS=1`): candle runs element-wise operations on a
///   barrier pool of spinning workers beside rayon, which runs the GEMMs
///   and spectok's fused kernels ([`crate::fused`]); with the heavy
///   element-wise work fused, what is left for that pool (residual adds,
///   gradient accumulation) is small, and its spinning workers take cores
///   from the GEMM threads. On 2 cores (`cargo xtask bench --breakdown`,
///   interleaved): train-step backward 1.16–1.59 s → 1.12–1.18 s, embed
///   0.26–0.29 s → 0.255 s.
/// - glibc's allocator keeps freed memory for reuse (allocations up to
///   32 MiB from the heap, up to 512 MiB of free heap kept instead of
///   returned to the system): batches, spectra and activations are
///   allocated and freed at the same sizes over and over, and returning
///   them made every new one fault its pages in again. Reading and
///   batching 4 APOGEE spectra: 1.44 → 0.78 ms (collation 0.29 → 0.02 ms).
///   Peak memory is unchanged (the `cargo xtask bench` RSS table); skipped
///   when `GLIBC_TUNABLES` is set.
pub fn configure() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        // SAFETY: mallopt only changes allocator parameters; it is called
        // before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
            libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        }
    }
}
