//! How the process hands freed memory back to the system.
//!
//! The binary's allocator is mimalloc, which returns freed pages to the system about 10 ms after
//! they fall free. That keeps a full refresh's peak low, since what one stage frees is given back
//! before the next grows. A short incremental run instead frees and allocates again within a
//! fraction of a second (the state's rows, then the executions, then the records), and every page
//! handed back is zeroed again by the kernel when it is touched anew: on the 40,000-project fleet
//! that zeroing was a third of the run's CPU time. A run given a state keeps its freed pages from
//! the start (the state's text is freed as soon as it is parsed), and hands them back again once
//! its new input turns out to be large.

/// `mi_option_purge_delay` in the order of mimalloc v2's `mi_option_e` (`mimalloc.h`): the
/// milliseconds before freed memory is handed back, `-1` for never.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// New input of at most this many bytes makes a run short enough to keep its freed memory.
pub const SHORT_RUN_INPUT_BYTES: u64 = 64 << 20;

/// mimalloc's own purge delay, in milliseconds.
const DEFAULT_PURGE_DELAY_MS: std::ffi::c_long = 10;

/// Keep freed memory for reuse until the process exits instead of handing it back.
///
/// It only changes an allocator setting (a plain store that mimalloc reads when it next purges);
/// where mimalloc is not the global allocator it has no effect.
pub fn keep_freed_memory() {
    // SAFETY: `mi_option_set` stores one integer in mimalloc's option table; the option exists in
    // the v2 library this crate links (see `PURGE_DELAY`).
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) }
}

/// Hand freed memory back after mimalloc's own delay again (undoes [`keep_freed_memory`] once a
/// run turns out to be long).
pub fn hand_back_freed_memory() {
    // SAFETY: as in `keep_freed_memory`.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, DEFAULT_PURGE_DELAY_MS) }
}

/// Hand back now the memory freed so far, wherever it was freed.
///
/// mimalloc hands back freed pages when it next looks at the heap they belong to; what one thread
/// frees of another's (the normaliser's tables, freed on a thread of their own) waits for the owning
/// thread, and a stage that allocates little leaves its predecessor's pages in place. A long run calls
/// this between stages so that the next stage's peak does not stack on the last one's leftovers:
/// after folding 1.58 million events, 45–58 MiB more was held without it, and the run's peak was
/// about 10 MiB higher.
pub fn collect() {
    // SAFETY: `mi_collect` walks mimalloc's own heaps and returns their free pages; it takes a flag
    // and touches nothing of the caller's.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Ask the kernel not to back this process with transparent huge pages.
///
/// mimalloc asks for huge pages on its arenas. On a virtual machine whose host takes back the
/// guest's free memory, each fresh 2 MiB page is backed anew when first touched: a run of a second
/// spent up to half its time in those faults, and how much varied from run to run. Small pages come
/// from memory the system used recently and cost about a tenth of a second per 200 MiB, steadily; a
/// full refresh measured the same or faster without huge pages. Short incremental runs, whose page
/// faults huge pages cut from about 30,000 to about 1,300, measured anywhere from 14% faster to 10%
/// slower with them, by fleet and by the hour (`bench/compare.py`), so they keep small pages too.
pub fn avoid_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and sets one flag of this process (inherited
    // by its children); a kernel without it returns an error, which changes nothing.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// End the process once its output is flushed, without freeing what it built.
///
/// Everything the process allocated goes back to the system as it exits anyway; freeing it first (and
/// mimalloc's own clean-up at exit) took a short incremental run a few per cent of its wall time.
/// Only for the command-line edge, once nothing is left to do.
pub fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let flushed = std::io::stdout().flush().and(std::io::stderr().flush());
    let code = if flushed.is_err() && code == 0 {
        1
    } else {
        code
    };
    // SAFETY: `_exit` ends the process at once; stdout and stderr were flushed above, and nothing
    // else this process writes is buffered in user space.
    unsafe { libc::_exit(code) }
}

/// Free `value` on a thread of its own: what a large run holds takes a tenth of a second or more to
/// free, and freeing it need not hold up what comes next (the process usually exits right after the
/// run).
pub fn free_aside<T: Send + 'static>(value: T) {
    let _ = std::thread::Builder::new()
        .name("free".into())
        .spawn(move || drop(value));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // the purge delay defaults to 10, unlike its neighbours in the enum (eager_commit_delay 1,
        // use_numa_nodes 0); setting it is read back, then the default is restored
        let before = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        assert_eq!(before, 10, "mimalloc v2's default purge delay is 10 ms");
        keep_freed_memory();
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }, -1);
        hand_back_freed_memory();
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) },
            before
        );
    }
}
