//! The 8-lane AVX2 kernel: one 32-bit lane per stream, so one pass of the
//! 64 MD5 steps compresses a block of each of 8 independent streams.
//!
//! The message words are loaded by transposing: for each quarter of the
//! block, four 256-bit rows (lane i in the low half, lane i + 4 in the high
//! half, one `vinserti128` load each) are transposed with 32- and 64-bit
//! unpacks into word-major vectors. That is 16 loads and 32 in-lane
//! shuffles per step, against 16 eight-element gathers. Measured on the
//! development machine (AMD EPYC, AVX2, shared and noisy): 156-185 ns per
//! 8-block step with the transpose (~2.8-3.1 GiB/s), 193-300 ns with
//! `vpgatherdd` (~1.6-2.5 GiB/s); one scalar block takes 135-200 ns, so a
//! step costs about one scalar block and pays off from two lanes on.
//!
//! The step is latency-bound (each of the 64 steps waits for the previous
//! one): interleaving two independent 8-lane groups measured 1.5-1.9x the
//! throughput with 16 streams. Not done here: the engine uses 8 lanes.

use std::arch::x86_64::{
    __m256i, _mm256_add_epi32, _mm256_and_si256, _mm256_andnot_si256, _mm256_loadu2_m128i,
    _mm256_loadu_si256, _mm256_or_si256, _mm256_set1_epi32, _mm256_slli_epi32, _mm256_srli_epi32,
    _mm256_storeu_si256, _mm256_unpackhi_epi32, _mm256_unpackhi_epi64, _mm256_unpacklo_epi32,
    _mm256_unpacklo_epi64, _mm256_xor_si256,
};

use crate::scalar::{md5_steps, K};

/// Streams compressed per step.
pub(crate) const LANES: usize = 8;

/// Word-major state of [`LANES`] streams: `state[w][lane]` is word `w`
/// (A, B, C, D) of stream `lane`.
pub(crate) type LaneWords = [[u32; LANES]; 4];

/// Compresses one block of each lane into `state`.
///
/// Safe to call only where AVX2 is present: callers check
/// `is_x86_feature_detected!("avx2")` first (see `crate::Kernel`).
#[target_feature(enable = "avx2")]
pub(crate) fn compress(state: &mut LaneWords, blocks: [&[u8; 64]; LANES]) {
    let m = load_words(&blocks);
    let start = load_state(state);
    let [mut a, mut b, mut c, mut d] = start;

    macro_rules! rotl {
        ($x:expr, $s:expr) => {{
            let x = $x;
            _mm256_or_si256(
                _mm256_slli_epi32::<{ $s }>(x),
                _mm256_srli_epi32::<{ 32 - $s }>(x),
            )
        }};
    }
    // The round functions, arranged so the newest word ($b) is used last:
    // the other operations can run before it is ready.
    macro_rules! round_fn {
        (f, $b:expr, $c:expr, $d:expr) => {
            _mm256_xor_si256($d, _mm256_and_si256($b, _mm256_xor_si256($c, $d)))
        };
        (g, $b:expr, $c:expr, $d:expr) => {
            _mm256_or_si256(_mm256_andnot_si256($d, $c), _mm256_and_si256($b, $d))
        };
        (h, $b:expr, $c:expr, $d:expr) => {
            _mm256_xor_si256(_mm256_xor_si256($c, $d), $b)
        };
        (i, $b:expr, $c:expr, $d:expr) => {
            _mm256_xor_si256(
                $c,
                _mm256_or_si256($b, _mm256_xor_si256($d, _mm256_set1_epi32(-1))),
            )
        };
    }
    macro_rules! step {
        ($r:ident, $a:ident, $b:ident, $c:ident, $d:ident, $m:expr, $k:expr, $s:expr) => {
            // a + message + constant does not depend on the round function.
            let amk =
                _mm256_add_epi32($a, _mm256_add_epi32(m[$m], _mm256_set1_epi32(K[$k] as i32)));
            let x = _mm256_add_epi32(amk, round_fn!($r, $b, $c, $d));
            $a = _mm256_add_epi32($b, rotl!(x, $s));
        };
    }
    md5_steps!(step, a, b, c, d);
    add_store(state, start, [a, b, c, d]);
}

/// The lanes' state words A, B, C, D.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn load_state(state: &LaneWords) -> [__m256i; 4] {
    state.each_ref().map(|w| load(w))
}

/// Adds the words a block's steps ended with to the ones it started from
/// (the end of the compression function) into `state`.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn add_store(state: &mut LaneWords, start: [__m256i; 4], end: [__m256i; 4]) {
    for ((w, s), e) in state.iter_mut().zip(start).zip(end) {
        store(w, _mm256_add_epi32(e, s));
    }
}

#[target_feature(enable = "avx2")]
#[inline]
fn load(words: &[u32; LANES]) -> __m256i {
    // SAFETY: `words` is 32 readable bytes; `loadu` has no alignment
    // requirement.
    unsafe { _mm256_loadu_si256(words.as_ptr().cast()) }
}

#[target_feature(enable = "avx2")]
#[inline]
fn store(words: &mut [u32; LANES], v: __m256i) {
    // SAFETY: `words` is 32 writable bytes; `storeu` has no alignment
    // requirement.
    unsafe { _mm256_storeu_si256(words.as_mut_ptr().cast(), v) }
}

/// The 16 little-endian message words of each lane's block, word-major:
/// `m[w]` holds word `w` of lanes 0..8.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn load_words(blocks: &[&[u8; 64]; LANES]) -> [__m256i; 16] {
    let [q0, q1, q2, q3] = [
        quarter(blocks, 0),
        quarter(blocks, 16),
        quarter(blocks, 32),
        quarter(blocks, 48),
    ];
    [
        q0[0], q0[1], q0[2], q0[3], q1[0], q1[1], q1[2], q1[3], q2[0], q2[1], q2[2], q2[3], q3[0],
        q3[1], q3[2], q3[3],
    ]
}

/// Words `at / 4 .. at / 4 + 4` of every lane, word-major: a 4x4 transpose
/// in each 128-bit half (lanes 0..4 low, lanes 4..8 high).
#[target_feature(enable = "avx2")]
#[inline]
fn quarter(blocks: &[&[u8; 64]; LANES], at: usize) -> [__m256i; 4] {
    debug_assert!(at <= 48);
    let row = |i: usize| {
        let (lo, hi) = (&blocks[i][at..at + 16], &blocks[i + 4][at..at + 16]);
        // SAFETY: `lo` and `hi` are 16 readable bytes each (the slicing
        // above is bounds-checked); the unaligned 128-bit loads have no
        // alignment requirement, and this closure runs inside an AVX2
        // function on a CPU that has AVX2 (the caller's contract).
        unsafe { _mm256_loadu2_m128i(hi.as_ptr().cast(), lo.as_ptr().cast()) }
    };
    let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
    let t0 = _mm256_unpacklo_epi32(r0, r1);
    let t1 = _mm256_unpackhi_epi32(r0, r1);
    let t2 = _mm256_unpacklo_epi32(r2, r3);
    let t3 = _mm256_unpackhi_epi32(r2, r3);
    [
        _mm256_unpacklo_epi64(t0, t2),
        _mm256_unpackhi_epi64(t0, t2),
        _mm256_unpacklo_epi64(t1, t3),
        _mm256_unpackhi_epi64(t1, t3),
    ]
}
