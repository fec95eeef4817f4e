//! The one byte generator: a deterministic, continuous stream (xorshift64) from a seed.
//! Whoever sends bytes and whoever checks them make a `Pattern` from the same seed; since
//! [`Pattern::fill`] called with any split of a buffer yields the same bytes as one call,
//! they may chunk the stream differently.

/// A deterministic byte stream.
pub struct Pattern {
    state: u64,
    /// The rest of the last word, for a fill that ended inside it.
    spare: [u8; 8],
    spare_at: usize,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern {
            // Spread small seeds over the state; xorshift's state must not be zero.
            state: seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            spare: [0; 8],
            spare_at: 8,
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x.to_le_bytes()
    }

    /// Fills `buf` with the next `buf.len()` bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while self.spare_at < 8 && i < buf.len() {
            buf[i] = self.spare[self.spare_at];
            self.spare_at += 1;
            i += 1;
        }
        let mut words = buf[i..].chunks_exact_mut(8);
        for word in &mut words {
            word.copy_from_slice(&self.next_word());
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            self.spare = self.next_word();
            let n = tail.len();
            tail.copy_from_slice(&self.spare[..n]);
            self.spare_at = n;
        }
    }

    /// The next `n` bytes of the stream.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.fill(&mut v);
        v
    }

    /// The next 8 bytes of the stream as a number: a pseudo-random draw.
    pub fn next_u64(&mut self) -> u64 {
        let mut word = [0; 8];
        self.fill(&mut word);
        u64::from_le_bytes(word)
    }

    /// Whether `data` is exactly the next `data.len()` bytes of the stream.
    pub fn matches(&mut self, data: &[u8]) -> bool {
        let mut expected = [0u8; 8192];
        let mut ok = true;
        for chunk in data.chunks(expected.len()) {
            let expected = &mut expected[..chunk.len()];
            self.fill(expected);
            ok &= expected == chunk;
        }
        ok
    }
}
