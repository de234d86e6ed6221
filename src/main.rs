//! The `rtlab` binary: all the work is in the library.

fn main() -> std::process::ExitCode {
    // glibc maps each allocation over 128 KiB afresh and unmaps it when freed, so a dataset scan's
    // per-piece buffers fault in new pages piece after piece. Serve them from the heap, reused.
    // And keep up to 256 MiB of freed memory at the heap's top instead of returning it at once (the
    // default once the threshold above is set is 128 KiB): decoding allocates and frees the same
    // tensors every step, and with the default they were faulted in afresh each time (800k page
    // faults in 128 tokens of SmolLM2, a third of the time). A finished training run still hands
    // everything back (`malloc_trim`).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
    // A write past the file-size limit (`ulimit -f`, a quota) should fail with "File too large" that
    // rtlab reports, leaving the previous file in place, not kill the process with SIGXFSZ. Caught by
    // a handler that does nothing, not ignored: exec resets a caught signal to its default and keeps
    // an ignored one ignored, so every tool rtlab starts still dies at its own file limit (the
    // verifier sets one, and starts tools with posix_spawn, where nothing runs before exec).
    extern "C" fn file_too_large(_: libc::c_int) {}
    // SAFETY: installing an empty handler before any other thread exists.
    unsafe {
        libc::signal(
            libc::SIGXFSZ,
            file_too_large as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
    rtlab::cli_main()
}
