//! Quantized weights on 2 MiB pages, where the kernel gives them.
//!
//! Decoding one stream reads every weight once per token: SmolLM2-135M's 97 MB, 24,000 pages of
//! 4 KiB, with a TLB miss and a page walk at each page boundary of the stream. On 2 MiB pages the
//! same bytes are 50 pages. Linux backs anonymous memory with huge pages only where asked
//! (`transparent_hugepage=madvise`, Debian's and most distributions' default), and the weights lie in
//! memory the allocator gave candle's loader, so after loading rtlab asks: `MADV_HUGEPAGE` on the
//! weights' memory, then `MADV_COLLAPSE` (Linux 6.1) to move the pages already there onto huge pages
//! now rather than whenever the kernel's background scan reaches them.
//!
//! Only how memory is backed changes, never what it holds, so a refusal (an older kernel, THP turned
//! off, no free huge page) costs the speed and nothing else, and is ignored. Most single tensors are
//! smaller than a huge page, but the loader allocates them one after another, so the weights fill most
//! of the huge pages their buffers cross; those pages are the ones advised.

/// Bytes of a huge page on x86-64 (and aarch64 with 4 KiB pages).
const HUGE_PAGE: usize = 2 << 20;

/// A huge page is advised when at least this much of it is weights. The rest is the allocator's
/// (chunk headers, the load's freed temporaries), which the collapse backs too: the share bounds the
/// memory advising can add to the weights' own.
const MIN_COVERED: usize = HUGE_PAGE / 2;

/// Asks the kernel to back with huge pages the 2 MiB-aligned pages that `buffers` mostly fill.
/// Returns the bytes advised (0 where the platform has no such advice or refused it).
pub(crate) fn advise(buffers: &[&[u8]]) -> usize {
    pages(buffers).into_iter().map(advise_page).sum()
}

/// [`advise`] over a model's quantized weights (their CPU buffers), unless `RTLAB_HUGE_PAGES=off`
/// asks for the allocator's pages as they come (to measure the difference).
pub(crate) fn advise_weights<'w>(
    weights: impl IntoIterator<Item = &'w crate::quantized::QuantizedWeight>,
) -> usize {
    if std::env::var("RTLAB_HUGE_PAGES").as_deref() == Ok("off") {
        return 0;
    }
    let data: Vec<std::borrow::Cow<'_, [u8]>> =
        weights.into_iter().filter_map(|q| q.buffer()).collect();
    // A CPU tensor lends its buffer; a copy (another device's) is not the weights' memory.
    let buffers: Vec<&[u8]> = data
        .iter()
        .filter_map(|d| match d {
            std::borrow::Cow::Borrowed(b) => Some(*b),
            std::borrow::Cow::Owned(_) => None,
        })
        .collect();
    advise(&buffers)
}

/// The huge pages to advise (their addresses): those at least [`MIN_COVERED`] of whose bytes lie
/// in `buffers`.
fn pages(buffers: &[&[u8]]) -> Vec<usize> {
    let mut covered: std::collections::BTreeMap<usize, usize> = Default::default();
    for b in buffers {
        let (mut at, end) = (b.as_ptr() as usize, b.as_ptr() as usize + b.len());
        while at < end {
            let page = at / HUGE_PAGE * HUGE_PAGE;
            let upto = end.min(page + HUGE_PAGE);
            *covered.entry(page).or_default() += upto - at;
            at = upto;
        }
    }
    covered
        .into_iter()
        .filter(|&(_, bytes)| bytes >= MIN_COVERED)
        .map(|(page, _)| page)
        .collect()
}

/// Advises one huge page, one call each: a page only partly mapped (the end of a buffer next to
/// memory that is not the process's) is refused alone, its neighbours still advised.
#[cfg(target_os = "linux")]
fn advise_page(page: usize) -> usize {
    /// `MADV_COLLAPSE` (Linux 6.1); the libc crate names it only for some targets.
    const MADV_COLLAPSE: libc::c_int = 25;
    let ptr = page as *mut libc::c_void;
    // SAFETY: both advices change how memory is backed, never what it holds, and the kernel checks
    // the range: a page not wholly mapped fails the call (ENOMEM) and nothing else.
    unsafe {
        if libc::madvise(ptr, HUGE_PAGE, libc::MADV_HUGEPAGE) != 0 {
            return 0;
        }
        libc::madvise(ptr, HUGE_PAGE, MADV_COLLAPSE);
    }
    HUGE_PAGE
}

#[cfg(not(target_os = "linux"))]
fn advise_page(_: usize) -> usize {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_huge_pages_advised_are_those_the_buffers_mostly_fill() {
        let memory = vec![0u8; 6 * HUGE_PAGE];
        let base = memory.as_ptr() as usize;
        let first = base.next_multiple_of(HUGE_PAGE) - base;
        let page = |i: usize| base + first + i * HUGE_PAGE;
        let at = |from: usize, to: usize| &memory[first + from..first + to];
        // Page 0: two buffers 4 KiB apart fill it all but 4 KiB. Page 1: 3/4 filled. Page 2: a
        // quarter. Page 3: exactly half. Page 4: nothing.
        let a = at(0, HUGE_PAGE / 2);
        let b = at(HUGE_PAGE / 2 + 4096, HUGE_PAGE + 3 * HUGE_PAGE / 4);
        let c = at(2 * HUGE_PAGE, 2 * HUGE_PAGE + HUGE_PAGE / 4);
        let d = at(3 * HUGE_PAGE + 1, 3 * HUGE_PAGE + 1 + HUGE_PAGE / 2);
        assert_eq!(pages(&[d, b, c, a]), vec![page(0), page(1), page(3)]);
        assert_eq!(pages(&[c]), Vec::<usize>::new());
        assert_eq!(pages(&[]), Vec::<usize>::new());
    }

    /// The kernel's THP mode, e.g. "madvise" (the bracketed word of the sysfs file).
    #[cfg(target_os = "linux")]
    fn thp_mode() -> String {
        let text = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        text.split_whitespace()
            .find(|w| w.starts_with('['))
            .unwrap_or("[none]")
            .trim_matches(['[', ']'])
            .to_string()
    }

    /// `AnonHugePages` of the mapping that holds `address`, in KiB (`/proc/self/smaps`).
    #[cfg(target_os = "linux")]
    fn huge_kib_at(address: usize) -> usize {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((from, to)) = first.split_once('-') {
                if let (Ok(from), Ok(to)) = (
                    usize::from_str_radix(from, 16),
                    usize::from_str_radix(to, 16),
                ) {
                    inside = (from..to).contains(&address);
                    continue;
                }
            }
            if inside && first == "AnonHugePages:" {
                return line.split_whitespace().nth(1).unwrap().parse().unwrap();
            }
        }
        panic!("no mapping holds {address:#x}")
    }

    /// Memory already written is moved onto huge pages at once (where the kernel offers them), and
    /// keeps every byte. (The kernel's background scan, `khugepaged`, also collapses what is advised,
    /// but page by page and later: "at once" is every page, read right after the call.)
    #[cfg(target_os = "linux")]
    #[test]
    fn advised_memory_moves_onto_huge_pages_at_once_and_keeps_its_bytes() {
        let memory: Vec<u8> = (0..8 * HUGE_PAGE).map(|i| (i * 7 % 251) as u8).collect();
        let before = memory.clone();
        // The whole huge pages inside the buffer; advising splits the mapping where its flags
        // change, so ask about a page inside.
        let inside = (memory.as_ptr() as usize).next_multiple_of(HUGE_PAGE);
        let whole = (memory.as_ptr() as usize + memory.len() - inside) / HUGE_PAGE;
        let advised = advise(&[&memory]);
        let huge = huge_kib_at(inside);
        assert_eq!(memory, before);
        match thp_mode().as_str() {
            "always" | "madvise" => {
                assert!(advised >= whole * HUGE_PAGE, "advised {advised} bytes");
                // The mapping asked about may hold more than this buffer (its neighbours'
                // pages), never less.
                assert!(
                    huge >= whole * HUGE_PAGE / 1024,
                    "THP is on, yet of {whole} huge pages advised {huge} KiB are huge"
                );
            }
            mode => panic!(
                "transparent huge pages are '{mode}' here: this test needs them on \
                 (echo madvise > /sys/kernel/mm/transparent_hugepage/enabled)"
            ),
        }
    }
}
