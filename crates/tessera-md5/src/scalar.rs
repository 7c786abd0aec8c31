//! The portable MD5 compression function (RFC 1321), one block at a time.
//!
//! md-5 0.10 keeps its `compress` private, hence this plain version; the
//! step table in [`md5_steps`] is shared with the SIMD kernel so the two
//! cannot drift apart.

/// The 64 additive constants, `floor(abs(sin(i + 1)) * 2^32)`.
pub(crate) const K: [u32; 64] = [
    0xd76a_a478,
    0xe8c7_b756,
    0x2420_70db,
    0xc1bd_ceee,
    0xf57c_0faf,
    0x4787_c62a,
    0xa830_4613,
    0xfd46_9501,
    0x6980_98d8,
    0x8b44_f7af,
    0xffff_5bb1,
    0x895c_d7be,
    0x6b90_1122,
    0xfd98_7193,
    0xa679_438e,
    0x49b4_0821,
    0xf61e_2562,
    0xc040_b340,
    0x265e_5a51,
    0xe9b6_c7aa,
    0xd62f_105d,
    0x0244_1453,
    0xd8a1_e681,
    0xe7d3_fbc8,
    0x21e1_cde6,
    0xc337_07d6,
    0xf4d5_0d87,
    0x455a_14ed,
    0xa9e3_e905,
    0xfcef_a3f8,
    0x676f_02d9,
    0x8d2a_4c8a,
    0xfffa_3942,
    0x8771_f681,
    0x6d9d_6122,
    0xfde5_380c,
    0xa4be_ea44,
    0x4bde_cfa9,
    0xf6bb_4b60,
    0xbebf_bc70,
    0x289b_7ec6,
    0xeaa1_27fa,
    0xd4ef_3085,
    0x0488_1d05,
    0xd9d4_d039,
    0xe6db_99e5,
    0x1fa2_7cf8,
    0xc4ac_5665,
    0xf429_2244,
    0x432a_ff97,
    0xab94_23a7,
    0xfc93_a039,
    0x655b_59c3,
    0x8f0c_cc92,
    0xffef_f47d,
    0x8584_5dd1,
    0x6fa8_7e4f,
    0xfe2c_e6e0,
    0xa301_4314,
    0x4e08_11a1,
    0xf753_7e82,
    0xbd3a_f235,
    0x2ad7_d2bb,
    0xeb86_d391,
];

/// The initial state (A, B, C, D).
pub(crate) const INIT: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// Invokes `$step!(round, a, b, c, d, message word, constant index, shift)`
/// for the 64 steps of MD5, rotating the roles of the four state words.
macro_rules! md5_steps {
    ($step:ident, $a:ident, $b:ident, $c:ident, $d:ident) => {
        $step!(f, $a, $b, $c, $d, 0, 0, 7);
        $step!(f, $d, $a, $b, $c, 1, 1, 12);
        $step!(f, $c, $d, $a, $b, 2, 2, 17);
        $step!(f, $b, $c, $d, $a, 3, 3, 22);
        $step!(f, $a, $b, $c, $d, 4, 4, 7);
        $step!(f, $d, $a, $b, $c, 5, 5, 12);
        $step!(f, $c, $d, $a, $b, 6, 6, 17);
        $step!(f, $b, $c, $d, $a, 7, 7, 22);
        $step!(f, $a, $b, $c, $d, 8, 8, 7);
        $step!(f, $d, $a, $b, $c, 9, 9, 12);
        $step!(f, $c, $d, $a, $b, 10, 10, 17);
        $step!(f, $b, $c, $d, $a, 11, 11, 22);
        $step!(f, $a, $b, $c, $d, 12, 12, 7);
        $step!(f, $d, $a, $b, $c, 13, 13, 12);
        $step!(f, $c, $d, $a, $b, 14, 14, 17);
        $step!(f, $b, $c, $d, $a, 15, 15, 22);

        $step!(g, $a, $b, $c, $d, 1, 16, 5);
        $step!(g, $d, $a, $b, $c, 6, 17, 9);
        $step!(g, $c, $d, $a, $b, 11, 18, 14);
        $step!(g, $b, $c, $d, $a, 0, 19, 20);
        $step!(g, $a, $b, $c, $d, 5, 20, 5);
        $step!(g, $d, $a, $b, $c, 10, 21, 9);
        $step!(g, $c, $d, $a, $b, 15, 22, 14);
        $step!(g, $b, $c, $d, $a, 4, 23, 20);
        $step!(g, $a, $b, $c, $d, 9, 24, 5);
        $step!(g, $d, $a, $b, $c, 14, 25, 9);
        $step!(g, $c, $d, $a, $b, 3, 26, 14);
        $step!(g, $b, $c, $d, $a, 8, 27, 20);
        $step!(g, $a, $b, $c, $d, 13, 28, 5);
        $step!(g, $d, $a, $b, $c, 2, 29, 9);
        $step!(g, $c, $d, $a, $b, 7, 30, 14);
        $step!(g, $b, $c, $d, $a, 12, 31, 20);

        $step!(h, $a, $b, $c, $d, 5, 32, 4);
        $step!(h, $d, $a, $b, $c, 8, 33, 11);
        $step!(h, $c, $d, $a, $b, 11, 34, 16);
        $step!(h, $b, $c, $d, $a, 14, 35, 23);
        $step!(h, $a, $b, $c, $d, 1, 36, 4);
        $step!(h, $d, $a, $b, $c, 4, 37, 11);
        $step!(h, $c, $d, $a, $b, 7, 38, 16);
        $step!(h, $b, $c, $d, $a, 10, 39, 23);
        $step!(h, $a, $b, $c, $d, 13, 40, 4);
        $step!(h, $d, $a, $b, $c, 0, 41, 11);
        $step!(h, $c, $d, $a, $b, 3, 42, 16);
        $step!(h, $b, $c, $d, $a, 6, 43, 23);
        $step!(h, $a, $b, $c, $d, 9, 44, 4);
        $step!(h, $d, $a, $b, $c, 12, 45, 11);
        $step!(h, $c, $d, $a, $b, 15, 46, 16);
        $step!(h, $b, $c, $d, $a, 2, 47, 23);

        $step!(i, $a, $b, $c, $d, 0, 48, 6);
        $step!(i, $d, $a, $b, $c, 7, 49, 10);
        $step!(i, $c, $d, $a, $b, 14, 50, 15);
        $step!(i, $b, $c, $d, $a, 5, 51, 21);
        $step!(i, $a, $b, $c, $d, 12, 52, 6);
        $step!(i, $d, $a, $b, $c, 3, 53, 10);
        $step!(i, $c, $d, $a, $b, 10, 54, 15);
        $step!(i, $b, $c, $d, $a, 1, 55, 21);
        $step!(i, $a, $b, $c, $d, 8, 56, 6);
        $step!(i, $d, $a, $b, $c, 15, 57, 10);
        $step!(i, $c, $d, $a, $b, 6, 58, 15);
        $step!(i, $b, $c, $d, $a, 13, 59, 21);
        $step!(i, $a, $b, $c, $d, 4, 60, 6);
        $step!(i, $d, $a, $b, $c, 11, 61, 10);
        $step!(i, $c, $d, $a, $b, 2, 62, 15);
        $step!(i, $b, $c, $d, $a, 9, 63, 21);
    };
}
pub(crate) use md5_steps;

/// Compresses one 64-byte block into `state`.
pub(crate) fn compress(state: &mut [u32; 4], block: &[u8; 64]) {
    let mut m = [0u32; 16];
    for (w, c) in m.iter_mut().zip(block.chunks_exact(4)) {
        *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    let [mut a, mut b, mut c, mut d] = *state;
    macro_rules! round_fn {
        (f, $b:expr, $c:expr, $d:expr) => {
            $d ^ ($b & ($c ^ $d))
        };
        (g, $b:expr, $c:expr, $d:expr) => {
            $c ^ ($d & ($b ^ $c))
        };
        (h, $b:expr, $c:expr, $d:expr) => {
            $b ^ $c ^ $d
        };
        (i, $b:expr, $c:expr, $d:expr) => {
            $c ^ ($b | !$d)
        };
    }
    macro_rules! step {
        ($r:ident, $a:ident, $b:ident, $c:ident, $d:ident, $m:expr, $k:expr, $s:expr) => {
            $a = $a
                .wrapping_add(round_fn!($r, $b, $c, $d))
                .wrapping_add(m[$m])
                .wrapping_add(K[$k])
                .rotate_left($s)
                .wrapping_add($b);
        };
    }
    md5_steps!(step, a, b, c, d);
    state[0] = state[0].wrapping_add(a);
    state[1] = state[1].wrapping_add(b);
    state[2] = state[2].wrapping_add(c);
    state[3] = state[3].wrapping_add(d);
}

/// Compresses every block of `data`, whose length is a multiple of 64.
pub(crate) fn compress_blocks(state: &mut [u32; 4], data: &[u8]) {
    debug_assert_eq!(data.len() % 64, 0);
    for block in data.chunks_exact(64) {
        if let Ok(block) = <&[u8; 64]>::try_from(block) {
            compress(state, block);
        }
    }
}
