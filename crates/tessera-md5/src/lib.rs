//! MD5 for S3 ETags, fast when many uploads are hashed at once.
//!
//! MD5 is sequential within a stream, so one stream cannot use SIMD; but a
//! gateway hashes many uploads concurrently. Like MinIO's `md5-simd`, the
//! [`Engine`] hashes up to eight streams in lockstep, one 32-bit SIMD lane
//! per stream (AVX2, detected at run time), on one dedicated thread that
//! callers hand whole buffers to.
//!
//! - [`Md5State`]: a streaming hasher (scalar), the unit of work the
//!   engine takes and gives back;
//! - [`Kernel`]: the compression function, one block of each of
//!   [`LANES`] streams per call (AVX2, or scalar where AVX2 is missing);
//! - [`Engine`]: the multi-buffer engine (`engine` module).
//!
//! This crate knows nothing of S3, the network or the gateway.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod engine;
mod scalar;

pub use engine::{Engine, EngineError, EngineStats, Gather, Pending, Urgency};

/// Streams a [`Kernel`] compresses per call.
pub const LANES: usize = 8;

/// Word-major state of [`LANES`] streams: `words[w][lane]` is word `w`
/// (A, B, C, D) of stream `lane`. Kept in this layout between calls so the
/// SIMD kernel loads it without a transpose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LaneStates {
    words: [[u32; LANES]; 4],
}

impl LaneStates {
    /// The compression state (A, B, C, D) of stream `lane` (below
    /// [`LANES`]).
    pub fn get(&self, lane: usize) -> [u32; 4] {
        let w = &self.words;
        [w[0][lane], w[1][lane], w[2][lane], w[3][lane]]
    }

    /// Sets the compression state of stream `lane` (below [`LANES`]).
    pub fn set(&mut self, lane: usize, state: [u32; 4]) {
        for (row, v) in self.words.iter_mut().zip(state) {
            row[lane] = v;
        }
    }
}

/// The MD5 compression function over [`LANES`] streams at once: the
/// best one this CPU has, chosen at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernel(KernelKind);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KernelKind {
    Scalar,
    /// Only constructed after `is_x86_feature_detected!("avx2")`.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// Only constructed after `is_x86_feature_detected!` of "avx512f",
    /// "avx512vl" and "avx2".
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernel {
    /// AVX-512 if this CPU has it, else AVX2 if it has that, else scalar.
    pub fn detect() -> Kernel {
        Kernel::avx512()
            .or_else(Kernel::avx2)
            .unwrap_or(Kernel::scalar())
    }

    /// The 8-lane AVX-512 kernel (AVX-512F and VL: rotates and
    /// three-input logic), if this CPU has it.
    pub fn avx512() -> Option<Kernel> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx2")
        {
            return Some(Kernel(KernelKind::Avx512));
        }
        None
    }

    /// One block at a time, lane after lane: any CPU.
    pub fn scalar() -> Kernel {
        Kernel(KernelKind::Scalar)
    }

    /// The 8-lane AVX2 kernel, if this CPU has AVX2.
    pub fn avx2() -> Option<Kernel> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Some(Kernel(KernelKind::Avx2));
        }
        None
    }

    /// Whether this kernel hashes lanes in parallel (else one after the
    /// other, and a multi-buffer engine gains nothing over one thread per
    /// stream).
    pub fn is_simd(self) -> bool {
        self.0 != KernelKind::Scalar
    }

    /// `"avx512"`, `"avx2"` or `"scalar"`.
    pub fn name(self) -> &'static str {
        match self.0 {
            KernelKind::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx512 => "avx512",
        }
    }

    /// Compresses `blocks[lane]` into stream `lane` of `states`, for every
    /// lane. (Unused lanes still cost a SIMD kernel their share of work:
    /// give them any block and ignore their state.)
    pub fn compress(self, states: &mut LaneStates, blocks: [&[u8; 64]; LANES]) {
        match self.0 {
            KernelKind::Scalar => {
                for (lane, block) in blocks.into_iter().enumerate() {
                    let mut s = states.get(lane);
                    scalar::compress(&mut s, block);
                    states.set(lane, s);
                }
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `KernelKind::Avx2` is only constructed once
            // `is_x86_feature_detected!("avx2")` has returned true.
            KernelKind::Avx2 => unsafe { avx2::compress(&mut states.words, blocks) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `KernelKind::Avx512` is only constructed once
            // `is_x86_feature_detected!` has returned true for "avx512f",
            // "avx512vl" and "avx2".
            KernelKind::Avx512 => unsafe { avx512::compress(&mut states.words, blocks) },
        }
    }
}

/// A streaming MD5 hasher: the compression state, the bytes of a partial
/// block not yet compressed, and the length so far. Feed it with
/// [`update`](Self::update) (here, scalar) or through an [`Engine`].
#[derive(Clone)]
pub struct Md5State {
    state: [u32; 4],
    tail: [u8; 64],
    /// Bytes used in `tail`, always below 64.
    tail_len: usize,
    /// Bytes absorbed so far.
    len: u64,
}

impl Default for Md5State {
    fn default() -> Self {
        Md5State::new()
    }
}

impl std::fmt::Debug for Md5State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Md5State")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Md5State {
    /// The state of an empty message.
    pub fn new() -> Self {
        Md5State {
            state: scalar::INIT,
            tail: [0; 64],
            tail_len: 0,
            len: 0,
        }
    }

    /// Bytes absorbed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was absorbed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Absorbs `data`, on this thread.
    pub fn update(&mut self, data: &[u8]) {
        let at = self.begin(data);
        let rest = &data[at..];
        let full = rest.len() - rest.len() % 64;
        scalar::compress_blocks(&mut self.state, &rest[..full]);
        self.end(&rest[full..]);
    }

    /// The digest of everything absorbed.
    pub fn finalize(mut self) -> [u8; 16] {
        let bits = self.len.wrapping_mul(8);
        let mut pad = [0u8; 72];
        pad[0] = 0x80;
        // 0x80, zeros up to 56 mod 64, then the length in bits.
        let zeros = (55 - self.tail_len as isize).rem_euclid(64) as usize;
        let n = 1 + zeros;
        pad[n..n + 8].copy_from_slice(&bits.to_le_bytes());
        let len = self.len;
        self.update(&pad[..n + 8]);
        debug_assert_eq!(self.tail_len, 0);
        self.len = len;
        let mut out = [0u8; 16];
        for (o, w) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Starts absorbing `data`: counts its length and completes the
    /// partial block with its first bytes. Returns how many bytes that
    /// took; the rest starts on a block boundary (or is empty).
    fn begin(&mut self, data: &[u8]) -> usize {
        self.len = self.len.wrapping_add(data.len() as u64);
        if self.tail_len == 0 {
            return 0;
        }
        let take = (64 - self.tail_len).min(data.len());
        self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&data[..take]);
        self.tail_len += take;
        if self.tail_len == 64 {
            let block = self.tail;
            scalar::compress(&mut self.state, &block);
            self.tail_len = 0;
        }
        take
    }

    /// Ends absorbing: keeps the last partial block (`rest`, under 64
    /// bytes) once every full block before it is compressed. `rest` is
    /// empty unless the partial block was (see [`begin`](Self::begin)).
    fn end(&mut self, rest: &[u8]) {
        debug_assert!(rest.len() < 64 && (rest.is_empty() || self.tail_len == 0));
        self.tail[self.tail_len..self.tail_len + rest.len()].copy_from_slice(rest);
        self.tail_len += rest.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::Digest;

    fn reference(data: &[u8]) -> [u8; 16] {
        md5::Md5::digest(data).into()
    }

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
            .collect()
    }

    #[test]
    fn known_answers() {
        let hex = |d: [u8; 16]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(Md5State::new().finalize()),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        let mut s = Md5State::new();
        s.update(b"The quick brown fox jumps over the lazy dog");
        assert_eq!(hex(s.finalize()), "9e107d9d372bb6826bd81d3542a419d6");
    }

    #[test]
    fn scalar_matches_md5_crate_at_block_edges() {
        for len in [0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000] {
            let data = bytes(len, len as u8);
            for split in [0, 1, len / 2, len.saturating_sub(1), len].map(|s| s.min(len)) {
                let mut s = Md5State::new();
                s.update(&data[..split]);
                s.update(&data[split..]);
                assert_eq!(s.len(), len as u64);
                assert_eq!(s.finalize(), reference(&data), "len {len} split {split}");
            }
        }
    }

    #[test]
    fn avx2_kernel_matches_scalar_with_different_data_per_lane() {
        simd_kernel_matches_scalar(Kernel::avx2(), "AVX2");
    }

    #[test]
    fn avx512_kernel_matches_scalar_with_different_data_per_lane() {
        simd_kernel_matches_scalar(Kernel::avx512(), "AVX-512");
    }

    fn simd_kernel_matches_scalar(kernel: Option<Kernel>, name: &str) {
        let Some(simd) = kernel else {
            eprintln!("no {name} on this CPU: that kernel is not tested");
            return;
        };
        let blocks: Vec<[u8; 64]> = (0..LANES)
            .map(|lane| {
                let v = bytes(64, 17 * lane as u8 + 1);
                <[u8; 64]>::try_from(v.as_slice()).unwrap()
            })
            .collect();
        let refs: [&[u8; 64]; LANES] = std::array::from_fn(|lane| &blocks[lane]);
        let mut states = LaneStates::default();
        for lane in 0..LANES {
            // Different starting states too, so a lane mix-up shows.
            states.set(
                lane,
                [
                    lane as u32,
                    1 << lane,
                    !(lane as u32),
                    0x0123_4567 ^ lane as u32,
                ],
            );
        }
        let mut expect = states;
        Kernel::scalar().compress(&mut expect, refs);
        let mut got = states;
        simd.compress(&mut got, refs);
        assert_eq!(got, expect);
        // And the scalar kernel agrees with the streaming hasher.
        for (lane, block) in blocks.iter().enumerate() {
            let mut one = states.get(lane);
            scalar::compress(&mut one, block);
            assert_eq!(expect.get(lane), one);
        }
    }
}
