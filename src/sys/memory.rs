//! Memory for the engines' records in huge pages (see [`crate::engine::RecordMemory`]).
//!
//! Each region is an anonymous private mapping rounded to whole 2 MiB pages and aligned to
//! one, marked `MADV_HUGEPAGE`, so that the kernel backs it with transparent huge pages where
//! its policy (`/sys/kernel/mm/transparent_hugepage/enabled`: `always` or `madvise`) and free
//! memory allow; where they do not, the same mapping works with small pages. Below one huge
//! page the heap serves (a small table stays in a few TLB entries anyway).

use crate::engine::RecordMemory;
use core::ptr::NonNull;

const HUGE_PAGE: usize = 2 << 20;

/// Record memory from anonymous mappings advised into transparent huge pages.
#[derive(Debug, Default, Clone, Copy)]
pub struct HugePages;

impl HugePages {
    fn rounded(bytes: usize) -> usize {
        bytes.div_ceil(HUGE_PAGE) * HUGE_PAGE
    }
}

impl RecordMemory for HugePages {
    fn allocate(&self, bytes: usize) -> Option<NonNull<u8>> {
        if bytes < HUGE_PAGE {
            return None;
        }
        let size = Self::rounded(bytes);
        // Map one huge page more than needed, then cut the ends so that the region starts on
        // a huge-page boundary (only aligned 2 MiB ranges can be huge pages).
        let span = size + HUGE_PAGE;
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                span,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        let start = p as usize;
        let aligned = start.next_multiple_of(HUGE_PAGE);
        let head = aligned - start;
        let tail = span - head - size;
        // SAFETY: both ranges lie inside the mapping just made and are not used.
        unsafe {
            if head > 0 {
                libc::munmap(p, head);
            }
            if tail > 0 {
                libc::munmap((aligned + size) as *mut libc::c_void, tail);
            }
            // Advice only: without huge pages the mapping still works.
            libc::madvise(aligned as *mut libc::c_void, size, libc::MADV_HUGEPAGE);
        }
        NonNull::new(aligned as *mut u8)
    }

    unsafe fn release(&self, p: NonNull<u8>, bytes: usize) {
        // SAFETY: `p` is the start of a mapping of `rounded(bytes)` made by `allocate`.
        unsafe {
            libc::munmap(p.as_ptr().cast(), Self::rounded(bytes));
        }
    }
}

/// Kilobytes of `[start, start + len)` that the kernel backs with transparent huge pages now
/// (from `/proc/self/smaps`), or `None` if it cannot be read.
pub fn huge_kib(start: usize, len: usize) -> Option<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut inside = false;
    let mut kib = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                inside = a < start + len && start < b;
                continue;
            }
        }
        if inside {
            if let Some(v) = line.strip_prefix("AnonHugePages:") {
                kib += v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()?;
            }
        }
    }
    Some(kib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_aligned_zeroed_writable_and_given_back() {
        let m = HugePages;
        assert!(m.allocate(4096).is_none(), "small tables stay on the heap");
        let bytes = 5 * HUGE_PAGE + 64;
        let p = m.allocate(bytes).expect("an anonymous mapping");
        assert_eq!(p.as_ptr() as usize % HUGE_PAGE, 0);
        // SAFETY: `bytes` bytes were just mapped for us.
        let s = unsafe { core::slice::from_raw_parts_mut(p.as_ptr(), bytes) };
        assert!(s.iter().all(|&b| b == 0));
        s.fill(0xa5);
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        let huge = huge_kib(p.as_ptr() as usize, bytes).expect("smaps readable");
        eprintln!("THP policy {}: {huge} KiB in huge pages", thp.trim());
        if thp.contains("[never]") {
            assert_eq!(huge, 0);
        } else {
            // The kernel's policy allows them, and five aligned huge pages were touched.
            assert!(
                huge >= 2048,
                "no huge pages under THP policy {}",
                thp.trim()
            );
        }
        // SAFETY: from `allocate(bytes)` above, not used after this.
        unsafe { m.release(p, bytes) };
    }
}
