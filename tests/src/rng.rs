//! The tests' one pseudo-random generator: xorshift64*, small, deterministic and seeded, so a
//! seed printed in a failure replays it exactly. Test data (random bytes, message sizes, split
//! points, kill moments) all come from here; nothing in the code under test is used.

/// xorshift64* (Vigna): 64 bits of state, the top bits of each output are good.
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value; 0 is fine).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform (near enough) in `0..n`; 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// One byte: the output's top 8 bits.
    pub fn byte(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }

    /// `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// `n` deterministic pseudo-random bytes for `seed`, so a misplaced byte is noticed.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    Rng::new(seed).bytes(n)
}

/// A seed from the environment variable `var` (to replay a failure), else from the clock.
/// The caller prints it.
pub fn seed(var: &str) -> u64 {
    match std::env::var(var) {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("{var} must be a number, not {s:?}")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}
