//! The 8-lane AVX-512 kernel: the AVX2 kernel's layout (one 32-bit lane
//! per stream in a 256-bit register, the same transposed message load),
//! with the two AVX-512VL instructions MD5 wants: a rotate (`vprold`, one
//! instruction where AVX2 needs two shifts and an or) and a three-input
//! logic function (`vpternlogd`: each round function is one instruction,
//! not two or three). A step is latency-bound (each of the 64 steps waits
//! for the one before), and this shortens the chain of every step from
//! six dependent instructions to four.
//!
//! Measured on this project's 2-core VM (Intel with AVX-512; `cargo bench
//! -p tessera-benches --bench hashes -- md5-streams`, 2026-11-30): eight
//! 1 MiB streams take 2.71 ms with this kernel, 3.18 ms with AVX2, and one
//! stream 1.60 ms with the scalar kernel. So an 8-lane step costs about
//! 1.7 scalar blocks here (AVX2: 2.0): the engine gains from two busy
//! lanes on instead of from three.

use std::arch::x86_64::{
    _mm256_add_epi32, _mm256_rol_epi32, _mm256_set1_epi32, _mm256_ternarylogic_epi32,
};

use crate::avx2::{add_store, load_state, load_words, LaneWords};
use crate::scalar::{md5_steps, K};

/// Compresses one block of each lane into `state`.
///
/// Safe to call only where AVX-512F and AVX-512VL are present: callers
/// check `is_x86_feature_detected!` first (see `crate::Kernel`).
#[target_feature(enable = "avx512f,avx512vl,avx2")]
pub(crate) fn compress(state: &mut LaneWords, blocks: [&[u8; 64]; crate::LANES]) {
    let m = load_words(&blocks);
    let start = load_state(state);
    let [mut a, mut b, mut c, mut d] = start;

    // The round functions as `vpternlogd` truth tables over (b, c, d):
    // bit `4b + 2c + d` of the immediate is the function's value there.
    // F = (b & c) | (!b & d); G = (b & d) | (c & !d); H = b ^ c ^ d;
    // I = c ^ (b | !d).
    macro_rules! round_fn {
        (f, $b:expr, $c:expr, $d:expr) => {
            _mm256_ternarylogic_epi32::<0xCA>($b, $c, $d)
        };
        (g, $b:expr, $c:expr, $d:expr) => {
            _mm256_ternarylogic_epi32::<0xE4>($b, $c, $d)
        };
        (h, $b:expr, $c:expr, $d:expr) => {
            _mm256_ternarylogic_epi32::<0x96>($b, $c, $d)
        };
        (i, $b:expr, $c:expr, $d:expr) => {
            _mm256_ternarylogic_epi32::<0x39>($b, $c, $d)
        };
    }
    macro_rules! step {
        ($r:ident, $a:ident, $b:ident, $c:ident, $d:ident, $m:expr, $k:expr, $s:expr) => {
            // a + message + constant does not depend on the round function.
            let amk =
                _mm256_add_epi32($a, _mm256_add_epi32(m[$m], _mm256_set1_epi32(K[$k] as i32)));
            let x = _mm256_add_epi32(amk, round_fn!($r, $b, $c, $d));
            $a = _mm256_add_epi32($b, _mm256_rol_epi32::<{ $s }>(x));
        };
    }
    md5_steps!(step, a, b, c, d);
    add_store(state, start, [a, b, c, d]);
}
