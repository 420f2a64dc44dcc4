//! A tiny deterministic PRNG (PCG hash) shared by the sampler seeds and the tests.
//! The same hash is in shaders/sample.wgsl so CPU references can reproduce GPU draws.

/// PCG-style integer hash, identical to `pcg_hash` in shaders/sample.wgsl.
pub fn pcg_hash(v: u32) -> u32 {
    let state = v.wrapping_mul(747796405).wrapping_add(2891336453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277803737);
    (word >> 22) ^ word
}

/// Uniform f32 in [0, 1) from a hash, as the shaders compute it.
pub fn unit_f32(h: u32) -> f32 {
    (h >> 8) as f32 / 16777216.0
}

/// A small seeded generator for tests and benchmarks.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u32(&mut self) -> u32 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        unit_f32(self.next_u32()) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
    pub fn below(&mut self, n: u32) -> u32 {
        self.next_u32() % n
    }
}
