//! Giving freed heap back to the kernel after a table swap.
//!
//! Compiling a table allocates far more than the table keeps (the parsed
//! spec, indexes under construction, the replaced table), and glibc's
//! allocator returns freed memory to the kernel only from the top of each
//! heap: without a trim, a process that once compiled a million routes
//! keeps that peak as RSS for good, interleaved with live allocations.
//! `malloc_trim(0)` releases every free page of every arena
//! (`MADV_DONTNEED`); it runs on a blocking thread after the old table is
//! dropped, never on the runtime that moves bytes.

/// Returns free heap pages to the kernel (glibc only; elsewhere nothing).
pub(crate) fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only walks the allocator's
    // own arenas under their locks; glibc documents it as thread-safe
    // (MT-Safe), so it may run while other threads allocate.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}
