//! The outbound byte queue each connection owns, and the page-aligned scratch the
//! reactor reads into.
//!
//! A `Vec` plus a read offset: appends go to the end, writes consume from the front, and the
//! consumed prefix is reclaimed when it grows large. The queue never limits itself; the
//! connection compares its length with the high-water mark and the reactor applies
//! backpressure. After a burst drains, excess capacity is returned to the allocator so
//! an idle connection does not keep a peak-sized buffer.

/// Capacity kept after the queue drains; larger allocations are released.
const RETAINED_CAPACITY: usize = 64 * 1024;

#[derive(Default)]
pub(crate) struct OutBuffer {
    bytes: Vec<u8>,
    start: usize,
}

impl OutBuffer {
    pub(crate) fn len(&self) -> usize {
        self.bytes.len() - self.start
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start * 2 >= self.bytes.len() {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        self.bytes.extend_from_slice(data);
    }

    pub(crate) fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n;
        if self.start == self.bytes.len() {
            self.clear();
        }
    }

    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.start = 0;
        if self.bytes.capacity() > RETAINED_CAPACITY {
            self.bytes.shrink_to(RETAINED_CAPACITY);
        }
    }
}

/// Scratch bytes whose first byte starts a 4 KiB page: the reactor's read buffer and
/// the relay's copy buffer.
///
/// Where the allocator happens to put a buffer is not neutral: with the relay's 64 KiB
/// copy buffer starting 16 bytes before a page boundary, the kernel's copy out of it
/// in `send` took five times as long as from any other start tried, and a copying
/// relay moved an iperf3 stream at 0.55–0.60 GiB/s instead of 0.86–1.13 (three runs
/// each; docs/benchmarks.md, "A buffer's place in its page"). Which start a build got
/// depended on the heap's layout, so an unrelated change could halve the copy path.
/// Starting on a page takes the lottery away.
#[derive(Default)]
pub(crate) struct PageAligned {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

/// The boundary [`PageAligned`] starts on. Larger pages are multiples of it.
const PAGE: usize = 4096;

impl PageAligned {
    pub(crate) fn new(len: usize) -> PageAligned {
        let bytes = vec![0; len + PAGE - 1];
        let start = (PAGE - bytes.as_ptr() as usize % PAGE) % PAGE;
        PageAligned { bytes, start, len }
    }
}

impl std::ops::Deref for PageAligned {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for PageAligned {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::{OutBuffer, PAGE, PageAligned};

    #[test]
    fn page_aligned_scratch_starts_on_a_page_and_has_the_length_asked() {
        for len in [1, 16 * 1024, 64 * 1024] {
            let mut buf = PageAligned::new(len);
            assert_eq!(buf.len(), len);
            assert_eq!(buf.as_ptr() as usize % PAGE, 0);
            buf[len - 1] = 7;
            assert_eq!(buf[len - 1], 7);
        }
        assert!(PageAligned::default().is_empty());
    }

    #[test]
    fn keeps_order_across_partial_consumes_and_reclaims() {
        let mut buf = OutBuffer::default();
        buf.push(b"hello ");
        buf.push(b"world");
        buf.consume(3);
        assert_eq!(buf.as_slice(), b"lo world");
        buf.push(b"!");
        assert_eq!(buf.as_slice(), b"lo world!");
        buf.consume(9);
        assert!(buf.is_empty());
        assert_eq!(buf.start, 0);
    }

    #[test]
    fn releases_capacity_after_a_burst() {
        let mut buf = OutBuffer::default();
        buf.push(&vec![7u8; 4 * 1024 * 1024]);
        buf.consume(4 * 1024 * 1024);
        assert!(buf.bytes.capacity() <= super::RETAINED_CAPACITY);
    }
}
