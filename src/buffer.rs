//! The outbound byte queue each connection owns.
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

#[cfg(test)]
mod tests {
    use super::OutBuffer;

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
