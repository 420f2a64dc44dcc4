//! Block-quantized weight formats (ggml's), their CPU dequantization (the reference for the
//! GPU kernels), and the GPU layout ([`to_gpu`]), in which every field starts on a u32 word:
//! * the 32-value formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) are repacked in tiles of
//!   [`TILE_BLOCKS`] blocks, fields apart: the tile's quants (16 bytes a block, 32 for Q8_0,
//!   so each block's quants are one or two aligned vec4s), then its fifth bits (Q5_0/Q5_1, a
//!   word a block), then its scales (an f16 a block, or d and m in one word for Q4_1/Q5_1).
//!   No byte is padding except the zero blocks that fill a chunk's last tile, so the GPU
//!   holds the file's bytes (padded blocks took 20 for Q4_0's 18, 24 for Q5_0's 22 and 36
//!   for Q8_0's 34). Every field is then one texel fetch where weights live in textures
//!   (CPU adapters, [`crate::tensor::ChunkData`]): Qwen2.5-Coder-0.5B's Q8_0 LM head read
//!   in 35-39 ms a token there, against 42 padded and 60 tiled in storage buffers (lavapipe);
//! * the K-quants keep their blocks, each padded at the end to whole vec4s (Q6_K's 210 bytes
//!   to 224; Q4_K's 144 and Q5_K's 176 are), so the words a pair of groups shares are whole
//!   vec4s: one texel fetch each where weights live in textures.

use half::f16;

#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4_K,
    Q5_K,
    Q6_K,
}

pub const ALL: [QuantFormat; 8] = [
    QuantFormat::Q4_0,
    QuantFormat::Q4_1,
    QuantFormat::Q5_0,
    QuantFormat::Q5_1,
    QuantFormat::Q8_0,
    QuantFormat::Q4_K,
    QuantFormat::Q5_K,
    QuantFormat::Q6_K,
];

impl QuantFormat {
    /// Values per block.
    pub fn block_elems(self) -> usize {
        match self {
            QuantFormat::Q4_K | QuantFormat::Q5_K | QuantFormat::Q6_K => 256,
            _ => 32,
        }
    }

    /// Bytes per block in a GGUF file.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantFormat::Q4_0 => 18,
            QuantFormat::Q4_1 => 20,
            QuantFormat::Q5_0 => 22,
            QuantFormat::Q5_1 => 24,
            QuantFormat::Q8_0 => 34,
            QuantFormat::Q4_K => 144,
            QuantFormat::Q5_K => 176,
            QuantFormat::Q6_K => 210,
        }
    }

    /// Whether blocks are repacked in tiles on the GPU (the 32-value formats).
    pub fn tiled(self) -> bool {
        self.block_elems() == 32
    }

    /// Bytes per block on the GPU: the file's for the tiled formats, whole words otherwise.
    pub fn gpu_block_bytes(self) -> usize {
        if self.tiled() {
            self.block_bytes()
        } else {
            self.block_bytes().next_multiple_of(16)
        }
    }

    /// The `QFORMAT` constant the shaders are specialised with.
    pub fn shader_id(self) -> u32 {
        match self {
            QuantFormat::Q4_0 => 2,
            QuantFormat::Q4_1 => 3,
            QuantFormat::Q5_0 => 6,
            QuantFormat::Q5_1 => 7,
            QuantFormat::Q8_0 => 8,
            QuantFormat::Q4_K => 12,
            QuantFormat::Q5_K => 13,
            QuantFormat::Q6_K => 14,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Q4_0 => "Q4_0",
            QuantFormat::Q4_1 => "Q4_1",
            QuantFormat::Q5_0 => "Q5_0",
            QuantFormat::Q5_1 => "Q5_1",
            QuantFormat::Q8_0 => "Q8_0",
            QuantFormat::Q4_K => "Q4_K",
            QuantFormat::Q5_K => "Q5_K",
            QuantFormat::Q6_K => "Q6_K",
        }
    }

    /// File bytes of `n` values (n a multiple of the block size).
    pub fn file_bytes(self, n: usize) -> usize {
        n / self.block_elems() * self.block_bytes()
    }

    /// GPU bytes of `n` values (the tiled formats: whole tiles).
    pub fn gpu_bytes(self, n: usize) -> usize {
        let blocks = n / self.block_elems();
        if self.tiled() {
            blocks.next_multiple_of(TILE_BLOCKS) * self.block_bytes()
        } else {
            blocks * self.gpu_block_bytes()
        }
    }

    /// The fields of a tiled block as byte ranges of the file block, in their order in a
    /// tile: quants, fifth bits (empty for Q4_0/Q4_1), scales (d, or d then m).
    fn fields(self) -> [std::ops::Range<usize>; 3] {
        match self {
            QuantFormat::Q4_0 => [2..18, 2..2, 0..2],
            QuantFormat::Q4_1 => [4..20, 4..4, 0..4],
            QuantFormat::Q5_0 => [6..22, 2..6, 0..2],
            QuantFormat::Q5_1 => [8..24, 4..8, 0..4],
            QuantFormat::Q8_0 => [2..34, 2..2, 0..2],
            _ => unreachable!("{} is not tiled", self.name()),
        }
    }
}

/// Blocks per GPU tile of the tiled formats.
pub const TILE_BLOCKS: usize = 8;

/// File blocks in the GPU layout (see the module's comment): the tiled formats repacked in
/// tiles, their last tile filled with zero blocks; the others padded to whole words.
pub fn to_gpu(format: QuantFormat, bytes: &[u8]) -> Vec<u8> {
    let b = format.block_bytes();
    if !format.tiled() {
        let g = format.gpu_block_bytes();
        if b == g {
            return bytes.to_vec();
        }
        let mut out = Vec::with_capacity(bytes.len() / b * g);
        for block in bytes.chunks_exact(b) {
            out.extend_from_slice(block);
            out.resize(out.len() + g - b, 0);
        }
        return out;
    }
    let mut out = Vec::with_capacity(format.gpu_bytes(bytes.len() / b * 32));
    let zero = vec![0u8; b];
    let blocks: Vec<&[u8]> = bytes.chunks_exact(b).collect();
    for tile in blocks.chunks(TILE_BLOCKS) {
        let block = |i: usize| tile.get(i).copied().unwrap_or(zero.as_slice());
        for field in format.fields() {
            for i in 0..TILE_BLOCKS {
                out.extend_from_slice(&block(i)[field.clone()]);
            }
        }
    }
    out
}

/// The file blocks of `n_blocks` blocks in the GPU layout: [`to_gpu`]'s inverse.
pub fn from_gpu(format: QuantFormat, gpu: &[u8], n_blocks: usize) -> Vec<u8> {
    let b = format.block_bytes();
    if !format.tiled() {
        let g = format.gpu_block_bytes();
        return gpu
            .chunks_exact(g)
            .take(n_blocks)
            .flat_map(|block| &block[..b])
            .copied()
            .collect();
    }
    let mut out = vec![0u8; n_blocks.next_multiple_of(TILE_BLOCKS) * b];
    for (t, tile) in gpu.chunks_exact(TILE_BLOCKS * b).enumerate() {
        let mut at = 0;
        for field in format.fields() {
            for i in 0..TILE_BLOCKS {
                let block = (t * TILE_BLOCKS + i) * b;
                out[block + field.start..block + field.end]
                    .copy_from_slice(&tile[at..at + field.len()]);
                at += field.len();
            }
        }
    }
    out.truncate(n_blocks * b);
    out
}

fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block's 12 packed scale bytes.
fn scale_min_k4(j: usize, s: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((s[j] & 63) as f32, (s[j + 4] & 63) as f32)
    } else {
        (
            ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4)) as f32,
            ((s[j + 4] >> 4) | ((s[j] >> 6) << 4)) as f32,
        )
    }
}

/// A block of a 32-value format (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) in file layout as integers:
/// its 32 quants (Q5's fifth bit included, no offset applied) and (a, c) with each value
/// q * a + c. None for the other formats. [`dequantize_block`] and the int8 matvec's reference
/// (kernels::matvec_q8) both read these formats through it.
pub fn block32_ints(format: QuantFormat, b: &[u8]) -> Option<([i32; 32], f32, f32)> {
    let d = half_at(b, 0);
    let mut q = [0i32; 32];
    // Nibbles: value j from the low nibble of qs[j], value j + 16 from its high nibble.
    let nibbles = |q: &mut [i32; 32], qs: &[u8]| {
        for (j, &byte) in qs.iter().enumerate() {
            q[j] = (byte & 15) as i32;
            q[j + 16] = (byte >> 4) as i32;
        }
    };
    // Q5: bit j of qh is the fifth bit of value j.
    let fifth = |q: &mut [i32; 32], o: usize| {
        let qh = u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        for (j, q) in q.iter_mut().enumerate() {
            *q |= (((qh >> j) & 1) << 4) as i32;
        }
    };
    let affine = match format {
        QuantFormat::Q4_0 => {
            nibbles(&mut q, &b[2..18]);
            (d, -8.0 * d)
        }
        QuantFormat::Q4_1 => {
            nibbles(&mut q, &b[4..20]);
            (d, half_at(b, 2))
        }
        QuantFormat::Q5_0 => {
            nibbles(&mut q, &b[6..22]);
            fifth(&mut q, 2);
            (d, -16.0 * d)
        }
        QuantFormat::Q5_1 => {
            nibbles(&mut q, &b[8..24]);
            fifth(&mut q, 4);
            (d, half_at(b, 2))
        }
        QuantFormat::Q8_0 => {
            for (q, &v) in q.iter_mut().zip(&b[2..34]) {
                *q = v as i8 as i32;
            }
            (d, 0.0)
        }
        _ => return None,
    };
    Some((q, affine.0, affine.1))
}

/// Dequantize one file-layout block into `y` (block_elems values).
pub fn dequantize_block(format: QuantFormat, b: &[u8], y: &mut [f32]) {
    match format {
        QuantFormat::Q4_0
        | QuantFormat::Q4_1
        | QuantFormat::Q5_0
        | QuantFormat::Q5_1
        | QuantFormat::Q8_0 => {
            if let Some((q, a, c)) = block32_ints(format, b) {
                for (y, q) in y.iter_mut().zip(q) {
                    *y = q as f32 * a + c;
                }
            }
        }
        QuantFormat::Q4_K | QuantFormat::Q5_K => {
            let d = half_at(b, 0);
            let dmin = half_at(b, 2);
            let scales = &b[4..16];
            let (qh, qs) = if format == QuantFormat::Q5_K {
                (Some(&b[16..48]), &b[48..176])
            } else {
                (None, &b[16..144])
            };
            for chunk in 0..4 {
                let (s1, m1) = scale_min_k4(2 * chunk, scales);
                let (s2, m2) = scale_min_k4(2 * chunk + 1, scales);
                let q = &qs[32 * chunk..32 * chunk + 32];
                for l in 0..32 {
                    let (mut lo, mut hi) = ((q[l] & 0xF) as f32, (q[l] >> 4) as f32);
                    if let Some(qh) = qh {
                        lo += if qh[l] & (1 << (2 * chunk)) != 0 {
                            16.0
                        } else {
                            0.0
                        };
                        hi += if qh[l] & (2 << (2 * chunk)) != 0 {
                            16.0
                        } else {
                            0.0
                        };
                    }
                    y[64 * chunk + l] = d * s1 * lo - dmin * m1;
                    y[64 * chunk + 32 + l] = d * s2 * hi - dmin * m2;
                }
            }
        }
        QuantFormat::Q6_K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = half_at(b, 208);
            for half in 0..2 {
                let (ql, qh, sc) = (&ql[64 * half..], &qh[32 * half..], &sc[8 * half..]);
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    let y = &mut y[128 * half..];
                    y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }
    }
}

/// Dequantize file-layout blocks (the CPU reference of every quantized kernel).
pub fn dequantize(format: QuantFormat, bytes: &[u8]) -> Vec<f32> {
    let n = bytes.len() / format.block_bytes() * format.block_elems();
    let mut y = vec![0.0; n];
    for (block, out) in bytes
        .chunks_exact(format.block_bytes())
        .zip(y.chunks_exact_mut(format.block_elems()))
    {
        dequantize_block(format, block, out);
    }
    y
}
