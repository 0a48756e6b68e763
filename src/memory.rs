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
/// guest's free memory, each fresh 2 MiB page is backed anew when first touched, and how long that
/// takes varies from run to run; a full refresh measured the same or faster without huge pages, and
/// its peak is a few MiB lower (a huge page is resident whole). A long run keeps small pages.
pub fn avoid_huge_pages() {
    set_huge_pages_disabled(true);
}

/// Let the kernel back this process with transparent huge pages again (undoes
/// [`avoid_huge_pages`] once a run turns out to be short).
///
/// A short incremental run touches about 150 MiB of fresh memory in a third of a second, mostly
/// while it decodes the state: in small pages that is some 30,000 page faults, a quarter of its CPU
/// time; in huge pages, about 900. On the 40,000-project fleet the 1% run's median wall time fell
/// by about a tenth, while its slowest runs stayed as slow (a host slow to back a huge page costs
/// a few of them more than it saves).
pub fn allow_huge_pages() {
    set_huge_pages_disabled(false);
}

fn set_huge_pages_disabled(disabled: bool) {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and sets one flag of this process (inherited
    // by its children), read by the kernel at each later page fault; a kernel without it returns an
    // error, which changes nothing.
    unsafe {
        libc::prctl(
            libc::PR_SET_THP_DISABLE,
            libc::c_ulong::from(disabled),
            0,
            0,
            0,
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = disabled;
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

    /// Whether the kernel may back this process with huge pages, as `/proc/self/status` says
    /// (`None` where it does not say).
    fn huge_pages_enabled() -> Option<bool> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("THP_enabled:"))?;
        Some(line.split_whitespace().nth(1)? == "1")
    }

    #[test]
    fn huge_pages_are_avoided_then_allowed_again() {
        if huge_pages_enabled().is_none() {
            return;
        }
        avoid_huge_pages();
        assert_eq!(huge_pages_enabled(), Some(false));
        allow_huge_pages();
        assert_eq!(huge_pages_enabled(), Some(true));
    }
}
