//! Object checksums (CRC32, CRC32C, CRC64NVME, SHA1, SHA256): the digests
//! the stripe writer runs alongside MD5, what a request says about its
//! body's checksum (an `x-amz-checksum-*` header or an aws-chunked trailer,
//! and the `x-amz-sdk-checksum-algorithm` selector), the check of one
//! against the other, and the multipart combinations (COMPOSITE: the
//! checksum of the part checksums plus `-N`; FULL_OBJECT: the parts' CRCs
//! combined into the CRC of the whole object, without reading it again).
//!
//! Stored form (manifests and parts): algorithm name -> base64 value. An
//! object always has a full-object `CRC64NVME`, and at most one other
//! algorithm, the one the client asked for (its *primary* checksum, the one
//! answered on GET/HEAD). A composite value ends in `-N` (base64 never has a
//! `-`), which is how its type is known.
//!
//! s3s decodes aws-chunked bodies, verifies chunk and trailer signatures
//! and exposes the trailing headers; verifying the trailer's *value*
//! against the body is the implementation's job, done here.

use std::collections::BTreeMap;

use base64::Engine;
use http::HeaderMap;
use s3s::crypto::Checksum as _;

use crate::error::ApiError;

/// A checksum algorithm of S3's flexible checksums.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Algorithm {
    Crc32,
    Crc32c,
    Crc64Nvme,
    Sha1,
    Sha256,
}

impl Algorithm {
    pub const ALL: [Algorithm; 5] = [
        Algorithm::Crc32,
        Algorithm::Crc32c,
        Algorithm::Crc64Nvme,
        Algorithm::Sha1,
        Algorithm::Sha256,
    ];

    /// The S3 name (`ChecksumAlgorithm`), also the key in stored maps.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Crc32 => "CRC32",
            Algorithm::Crc32c => "CRC32C",
            Algorithm::Crc64Nvme => "CRC64NVME",
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha256 => "SHA256",
        }
    }

    /// The header (and trailer) that carries a value of this algorithm.
    pub fn header(self) -> &'static str {
        match self {
            Algorithm::Crc32 => "x-amz-checksum-crc32",
            Algorithm::Crc32c => "x-amz-checksum-crc32c",
            Algorithm::Crc64Nvme => "x-amz-checksum-crc64nvme",
            Algorithm::Sha1 => "x-amz-checksum-sha1",
            Algorithm::Sha256 => "x-amz-checksum-sha256",
        }
    }

    /// Case-insensitive S3 name.
    pub fn parse(s: &str) -> Option<Algorithm> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
    }

    /// Case-insensitive header name.
    pub fn from_header(s: &str) -> Option<Algorithm> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|a| a.header().eq_ignore_ascii_case(s))
    }

    /// Bytes of a raw digest.
    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Crc32 | Algorithm::Crc32c => 4,
            Algorithm::Crc64Nvme => 8,
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 => 32,
        }
    }

    fn crc(self) -> Option<crc_fast::CrcAlgorithm> {
        match self {
            Algorithm::Crc32 => Some(crc_fast::CrcAlgorithm::Crc32IsoHdlc),
            Algorithm::Crc32c => Some(crc_fast::CrcAlgorithm::Crc32Iscsi),
            Algorithm::Crc64Nvme => Some(crc_fast::CrcAlgorithm::Crc64Nvme),
            Algorithm::Sha1 | Algorithm::Sha256 => None,
        }
    }

    /// The checksum type of a multipart upload that names only this
    /// algorithm (AWS: FULL_OBJECT for CRC64NVME, COMPOSITE otherwise).
    pub fn default_type(self) -> ChecksumType {
        match self {
            Algorithm::Crc64Nvme => ChecksumType::FullObject,
            _ => ChecksumType::Composite,
        }
    }

    /// Whether parts' values of this algorithm can be combined into the
    /// whole object's (the CRCs can; SHA digests cannot).
    pub fn supports(self, ty: ChecksumType) -> bool {
        match ty {
            ChecksumType::Composite => self != Algorithm::Crc64Nvme,
            ChecksumType::FullObject => self.crc().is_some(),
        }
    }
}

/// How a multipart object's checksum is made from its parts'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChecksumType {
    Composite,
    FullObject,
}

impl ChecksumType {
    pub fn name(self) -> &'static str {
        match self {
            ChecksumType::Composite => "COMPOSITE",
            ChecksumType::FullObject => "FULL_OBJECT",
        }
    }

    pub fn parse(s: &str) -> Option<ChecksumType> {
        match s.trim().to_ascii_uppercase().as_str() {
            "COMPOSITE" => Some(ChecksumType::Composite),
            "FULL_OBJECT" => Some(ChecksumType::FullObject),
            _ => None,
        }
    }

    /// The type of a stored value (composite ones end in `-N`).
    pub fn of_value(v: &str) -> ChecksumType {
        if v.contains('-') {
            ChecksumType::Composite
        } else {
            ChecksumType::FullObject
        }
    }
}

/// One running digest.
enum Running {
    Crc(crc_fast::Digest),
    Sha1(s3s::crypto::Sha1),
    Sha256(s3s::crypto::Sha256),
}

/// Running digests of several algorithms over one body, fed in order.
pub struct Hashers {
    running: Vec<(Algorithm, Running)>,
}

impl Hashers {
    /// Digests of each algorithm in `algorithms` (duplicates ignored).
    pub fn new(algorithms: impl IntoIterator<Item = Algorithm>) -> Self {
        let mut running: Vec<(Algorithm, Running)> = Vec::new();
        for a in algorithms {
            if running.iter().any(|(b, _)| *b == a) {
                continue;
            }
            let r = match (a, a.crc()) {
                (_, Some(c)) => Running::Crc(crc_fast::Digest::new(c)),
                (Algorithm::Sha1, None) => Running::Sha1(s3s::crypto::Sha1::new()),
                _ => Running::Sha256(s3s::crypto::Sha256::new()),
            };
            running.push((a, r));
        }
        Hashers { running }
    }

    pub fn update(&mut self, data: &[u8]) {
        for (_, r) in &mut self.running {
            match r {
                Running::Crc(d) => d.update(data),
                Running::Sha1(d) => d.update(data),
                Running::Sha256(d) => d.update(data),
            }
        }
    }

    pub fn finish(self) -> Computed {
        let mut out = BTreeMap::new();
        for (a, r) in self.running {
            let raw = match r {
                Running::Crc(d) => crc_bytes(a, d.finalize()),
                Running::Sha1(d) => d.finalize().as_ref().to_vec(),
                Running::Sha256(d) => d.finalize().as_ref().to_vec(),
            };
            out.insert(a, raw);
        }
        Computed(out)
    }
}

/// A CRC value as its big-endian bytes (4 or 8, as S3 encodes them).
fn crc_bytes(a: Algorithm, v: u64) -> Vec<u8> {
    match a.digest_len() {
        4 => (v as u32).to_be_bytes().to_vec(),
        _ => v.to_be_bytes().to_vec(),
    }
}

fn crc_value(raw: &[u8]) -> Option<u64> {
    match raw.len() {
        4 => Some(u32::from_be_bytes(raw.try_into().ok()?) as u64),
        8 => Some(u64::from_be_bytes(raw.try_into().ok()?)),
        _ => None,
    }
}

/// Raw digests of a body, by algorithm.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Computed(BTreeMap<Algorithm, Vec<u8>>);

impl Computed {
    pub fn get(&self, a: Algorithm) -> Option<&[u8]> {
        self.0.get(&a).map(Vec::as_slice)
    }

    /// The stored form: name -> base64.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .map(|(a, raw)| (a.name().to_string(), b64(raw)))
            .collect()
    }
}

pub fn b64(raw: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// Decodes a base64 checksum value of `a` (`what` names where it came
/// from, for the error: "header", "trailing header").
pub fn decode_value(a: Algorithm, v: &str, what: &str) -> Result<Vec<u8>, ApiError> {
    base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .ok()
        .filter(|raw| raw.len() == a.digest_len())
        .ok_or_else(|| {
            ApiError::InvalidRequest(format!("Value for {} {what} is invalid.", a.header()))
        })
}

/// Where the value a request's body must match comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expected {
    None,
    Header(Vec<u8>),
    Trailer,
}

/// What a PutObject or UploadPart request says about its body's checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestChecksum {
    /// The algorithm of the value sent (or announced as a trailer).
    pub algorithm: Option<Algorithm>,
    expected: Expected,
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::InvalidRequest(format!("Value for {name} header is invalid."))),
    }
}

impl RequestChecksum {
    /// Reads and checks the request's checksum headers: at most one
    /// `x-amz-checksum-*` value (in a header or announced by
    /// `x-amz-trailer`), and an `x-amz-sdk-checksum-algorithm` that agrees
    /// with it.
    pub fn from_headers(headers: &HeaderMap) -> Result<RequestChecksum, ApiError> {
        let mut sent: Vec<(Algorithm, Vec<u8>)> = Vec::new();
        for a in Algorithm::ALL {
            if let Some(v) = header_str(headers, a.header())? {
                sent.push((a, decode_value(a, v, "header")?));
            }
        }
        if sent.len() > 1 {
            return Err(ApiError::InvalidRequest(
                "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed."
                    .into(),
            ));
        }
        let mut trailer: Option<Algorithm> = None;
        if let Some(list) = header_str(headers, "x-amz-trailer")? {
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if !name.to_ascii_lowercase().starts_with("x-amz-checksum-") {
                    continue;
                }
                let a = Algorithm::from_header(name).ok_or_else(|| {
                    ApiError::InvalidRequest(
                        "The value specified in the x-amz-trailer header is not supported".into(),
                    )
                })?;
                if trailer.is_some_and(|t| t != a) {
                    return Err(ApiError::InvalidRequest(
                        "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed."
                            .into(),
                    ));
                }
                trailer = Some(a);
            }
        }
        let (algorithm, expected) = match (sent.pop(), trailer) {
            (Some((a, _)), Some(t)) if a != t => {
                return Err(ApiError::InvalidRequest(
                    "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed."
                        .into(),
                ))
            }
            // A value in a header wins over the same one announced as a
            // trailer (some SDKs announce it and send the header).
            (Some((a, raw)), _) => (Some(a), Expected::Header(raw)),
            (None, Some(t)) => {
                // Only the *-TRAILER payload modes carry trailers: anything
                // else would stream the whole body to fail at its end.
                let trailer_mode = header_str(headers, "x-amz-content-sha256")?
                    .is_some_and(|v| v.trim().ends_with("-TRAILER"));
                if !trailer_mode {
                    return Err(ApiError::MalformedTrailer(format!(
                        "{} is announced in x-amz-trailer but the payload carries no trailer",
                        t.header()
                    )));
                }
                (Some(t), Expected::Trailer)
            }
            (None, None) => (None, Expected::None),
        };
        let selector = match header_str(headers, "x-amz-sdk-checksum-algorithm")? {
            Some(v) => Some(v),
            None => header_str(headers, "x-amz-checksum-algorithm")?,
        };
        if let Some(sel) = selector {
            let invalid = || {
                ApiError::InvalidRequest(
                    "Value for x-amz-sdk-checksum-algorithm header is invalid.".into(),
                )
            };
            let sel = Algorithm::parse(sel).ok_or_else(invalid)?;
            match algorithm {
                Some(a) if a != sel => return Err(invalid()),
                Some(_) => {}
                None => {
                    return Err(ApiError::InvalidRequest(
                        "x-amz-sdk-checksum-algorithm specified, but no corresponding x-amz-checksum-* or x-amz-trailer headers were found."
                            .into(),
                    ))
                }
            }
        }
        Ok(RequestChecksum {
            algorithm,
            expected,
        })
    }

    /// Checks the body's digests against the value the request sent; a
    /// trailer is read from `trailers` (only complete once the body has
    /// been read to its end).
    pub fn verify(
        &self,
        computed: &Computed,
        trailers: Option<&s3s::TrailingHeaders>,
    ) -> Result<(), ApiError> {
        let Some(a) = self.algorithm else {
            return Ok(());
        };
        let want = match &self.expected {
            Expected::None => return Ok(()),
            Expected::Header(raw) => raw.clone(),
            Expected::Trailer => {
                let map = trailers.and_then(|t| t.take()).ok_or_else(|| {
                    ApiError::MalformedTrailer(format!("the {} trailer is missing", a.header()))
                })?;
                let v = map.get(a.header()).ok_or_else(|| {
                    ApiError::MalformedTrailer(format!("the {} trailer is missing", a.header()))
                })?;
                let v = v.to_str().map_err(|_| {
                    ApiError::InvalidRequest(format!(
                        "Value for {} trailing header is invalid.",
                        a.header()
                    ))
                })?;
                decode_value(a, v, "trailing header")?
            }
        };
        match computed.get(a) {
            Some(got) if got == want.as_slice() => Ok(()),
            Some(_) => Err(ApiError::ChecksumMismatch(a.name())),
            None => Err(ApiError::Internal(format!("{} was not computed", a.name()))),
        }
    }
}

/// The primary checksum of a stored map: the client's algorithm if any,
/// else the default CRC64NVME; with its value and type.
pub fn primary(map: &BTreeMap<String, String>) -> Option<(Algorithm, &str, ChecksumType)> {
    let mut found: Option<(Algorithm, &str)> = None;
    for (name, v) in map {
        let Some(a) = Algorithm::parse(name) else {
            continue;
        };
        if found.is_none() || a != Algorithm::Crc64Nvme {
            found = Some((a, v.as_str()));
        }
    }
    found.map(|(a, v)| (a, v, ChecksumType::of_value(v)))
}

/// The checksum of a multipart object from its parts' raw values of
/// `a` (with their sizes), as stored: COMPOSITE is the checksum of the
/// concatenated part checksums, then `-N`; FULL_OBJECT combines the CRCs.
pub fn combine_parts(
    a: Algorithm,
    ty: ChecksumType,
    parts: &[(Vec<u8>, u64)],
) -> Result<String, ApiError> {
    match ty {
        ChecksumType::Composite => {
            let mut h = Hashers::new([a]);
            for (raw, _) in parts {
                h.update(raw);
            }
            let raw = h.finish().get(a).map(b64).unwrap_or_default();
            Ok(format!("{raw}-{}", parts.len()))
        }
        ChecksumType::FullObject => {
            let crc = a.crc().ok_or_else(|| {
                ApiError::InvalidRequest(format!(
                    "The FULL_OBJECT checksum type cannot be used with the {} checksum algorithm.",
                    a.name().to_ascii_lowercase()
                ))
            })?;
            let mut acc: Option<u64> = None;
            for (raw, size) in parts {
                let v = crc_value(raw)
                    .ok_or_else(|| ApiError::Internal("a part's CRC has a bad length".into()))?;
                acc = Some(match acc {
                    None => v,
                    Some(prev) => crc_fast::checksum_combine(crc, prev, v, *size),
                });
            }
            let v = match acc {
                Some(v) => v,
                None => crc_fast::checksum(crc, b""),
            };
            Ok(b64(&crc_bytes(a, v)))
        }
    }
}

/// Sets the five `checksum_*` fields of an S3 output (or part) struct to
/// the one value given, if any.
macro_rules! set_checksum {
    ($out:expr, $value:expr) => {
        if let Some((a, v)) = $value {
            let v: String = v.to_string();
            match a {
                $crate::checksum::Algorithm::Crc32 => $out.checksum_crc32 = Some(v),
                $crate::checksum::Algorithm::Crc32c => $out.checksum_crc32c = Some(v),
                $crate::checksum::Algorithm::Crc64Nvme => $out.checksum_crc64nvme = Some(v),
                $crate::checksum::Algorithm::Sha1 => $out.checksum_sha1 = Some(v),
                $crate::checksum::Algorithm::Sha256 => $out.checksum_sha256 = Some(v),
            }
        }
    };
}
pub(crate) use set_checksum;

/// The value of algorithm `a` among the five `checksum_*` fields of an S3
/// input struct (e.g. a `CompletedPart`).
macro_rules! get_checksums {
    ($in:expr) => {
        [
            (
                $crate::checksum::Algorithm::Crc32,
                $in.checksum_crc32.as_deref(),
            ),
            (
                $crate::checksum::Algorithm::Crc32c,
                $in.checksum_crc32c.as_deref(),
            ),
            (
                $crate::checksum::Algorithm::Crc64Nvme,
                $in.checksum_crc64nvme.as_deref(),
            ),
            (
                $crate::checksum::Algorithm::Sha1,
                $in.checksum_sha1.as_deref(),
            ),
            (
                $crate::checksum::Algorithm::Sha256,
                $in.checksum_sha256.as_deref(),
            ),
        ]
    };
}
pub(crate) use get_checksums;

#[cfg(test)]
mod tests {
    use super::*;

    fn computed(data: &[u8]) -> Computed {
        let mut h = Hashers::new(Algorithm::ALL);
        h.update(data);
        h.finish()
    }

    #[test]
    fn known_values() {
        // Reference values for "hello world" (AWS documentation examples
        // and the algorithms' check values).
        let c = computed(b"123456789");
        let crc = |a| crc_value(c.get(a).unwrap()).unwrap();
        assert_eq!(crc(Algorithm::Crc32), 0xcbf43926);
        assert_eq!(crc(Algorithm::Crc32c), 0xe3069283);
        assert_eq!(crc(Algorithm::Crc64Nvme), 0xae8b14860a799888);
        assert_eq!(
            hex::encode(c.get(Algorithm::Sha1).unwrap()),
            "f7c3bc1d808e04732adf679965ccc34ca7ae3441"
        );
        assert_eq!(
            hex::encode(c.get(Algorithm::Sha256).unwrap()),
            "15e2b0d3c33891ebb0f1ef609ec419420c20e320ce94c65fbc8c3312448eb225"
        );
        // Feeding in pieces gives the same digests.
        let mut h = Hashers::new(Algorithm::ALL);
        h.update(b"1234");
        h.update(b"56789");
        assert_eq!(h.finish(), c);
    }

    #[test]
    fn full_object_combination_equals_the_whole() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let whole = computed(&data);
        for a in [Algorithm::Crc32, Algorithm::Crc32c, Algorithm::Crc64Nvme] {
            for cuts in [vec![0, 100_000], vec![0, 1, 5000, 5000, 99_999, 100_000]] {
                let parts: Vec<(Vec<u8>, u64)> = cuts
                    .windows(2)
                    .map(|w| {
                        let p = &data[w[0]..w[1]];
                        (computed(p).get(a).unwrap().to_vec(), p.len() as u64)
                    })
                    .collect();
                let v = combine_parts(a, ChecksumType::FullObject, &parts).unwrap();
                assert_eq!(v, b64(whole.get(a).unwrap()), "{a:?} {cuts:?}");
            }
        }
        assert!(combine_parts(Algorithm::Sha256, ChecksumType::FullObject, &[]).is_err());
    }

    #[test]
    fn composite_is_checksum_of_checksums() {
        let p1 = computed(b"part one");
        let p2 = computed(b"part two");
        let a = Algorithm::Sha256;
        let mut cat = p1.get(a).unwrap().to_vec();
        cat.extend_from_slice(p2.get(a).unwrap());
        let want = format!("{}-2", b64(computed(&cat).get(a).unwrap()));
        let parts = vec![
            (p1.get(a).unwrap().to_vec(), 8),
            (p2.get(a).unwrap().to_vec(), 8),
        ];
        assert_eq!(
            combine_parts(a, ChecksumType::Composite, &parts).unwrap(),
            want
        );
        assert_eq!(ChecksumType::of_value(&want), ChecksumType::Composite);
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn request_headers() {
        let body = b"hello";
        let c = computed(body);
        let good = b64(c.get(Algorithm::Crc32).unwrap());
        let r =
            RequestChecksum::from_headers(&headers(&[("x-amz-checksum-crc32", &good)])).unwrap();
        assert_eq!(r.algorithm, Some(Algorithm::Crc32));
        r.verify(&c, None).unwrap();
        let bad = RequestChecksum::from_headers(&headers(&[("x-amz-checksum-crc32", "AAAAAA==")]))
            .unwrap();
        assert!(matches!(
            bad.verify(&c, None),
            Err(ApiError::ChecksumMismatch("CRC32"))
        ));
        // Not base64, or the wrong length for the algorithm.
        for v in ["???", "AAAA"] {
            assert!(matches!(
                RequestChecksum::from_headers(&headers(&[("x-amz-checksum-crc64nvme", v)])),
                Err(ApiError::InvalidRequest(_))
            ));
        }
        // Two values.
        assert!(RequestChecksum::from_headers(&headers(&[
            ("x-amz-checksum-crc32", &good),
            ("x-amz-checksum-crc32c", &good),
        ]))
        .is_err());
        // The selector must agree, and must come with a value.
        assert!(RequestChecksum::from_headers(&headers(&[
            ("x-amz-checksum-crc32", &good),
            ("x-amz-sdk-checksum-algorithm", "SHA1"),
        ]))
        .is_err());
        assert!(RequestChecksum::from_headers(&headers(&[(
            "x-amz-sdk-checksum-algorithm",
            "CRC32"
        )]))
        .is_err());
        assert!(RequestChecksum::from_headers(&headers(&[
            ("x-amz-checksum-crc32", &good),
            ("x-amz-sdk-checksum-algorithm", "crc32"),
        ]))
        .is_ok());
        // A trailer announced, never sent.
        let t = RequestChecksum::from_headers(&headers(&[
            ("x-amz-trailer", "x-amz-checksum-crc32c"),
            ("x-amz-sdk-checksum-algorithm", "CRC32C"),
            ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
        ]))
        .unwrap();
        assert_eq!(t.algorithm, Some(Algorithm::Crc32c));
        assert!(matches!(
            t.verify(&c, None),
            Err(ApiError::MalformedTrailer(_))
        ));
        assert!(RequestChecksum::from_headers(&headers(&[(
            "x-amz-trailer",
            "x-amz-checksum-md5"
        )]))
        .is_err());
        // A trailer announced on a payload that cannot carry one.
        assert!(matches!(
            RequestChecksum::from_headers(&headers(&[
                ("x-amz-trailer", "x-amz-checksum-crc32"),
                ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
            ])),
            Err(ApiError::MalformedTrailer(_))
        ));
        // ... but a value in a header is used (SDKs that announce and send it).
        let both = RequestChecksum::from_headers(&headers(&[
            ("x-amz-trailer", "x-amz-checksum-crc32"),
            ("x-amz-checksum-crc32", &good),
            ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
        ]))
        .unwrap();
        both.verify(&c, None).unwrap();
        // No checksum at all.
        let none = RequestChecksum::from_headers(&HeaderMap::new()).unwrap();
        assert_eq!(none.algorithm, None);
        none.verify(&c, None).unwrap();
    }

    /// The header parser takes bytes from outside: arbitrary names and
    /// values are an Ok or an error, never a panic.
    #[test]
    fn header_parsing_never_panics() {
        let names = [
            "x-amz-checksum-crc32",
            "x-amz-checksum-crc32c",
            "x-amz-checksum-crc64nvme",
            "x-amz-checksum-sha1",
            "x-amz-checksum-sha256",
            "x-amz-trailer",
            "x-amz-sdk-checksum-algorithm",
            "x-amz-checksum-algorithm",
            "x-amz-content-sha256",
        ];
        let pieces = [
            "",
            " ",
            "=",
            "==",
            "A",
            "AAAA",
            "AAAAAA==",
            "AAAAAAAAAAA=",
            "CRC32",
            "crc64nvme",
            "SHA256",
            "x-amz-checksum-crc32",
            "x-amz-checksum-",
            ",",
            "-TRAILER",
            "\u{7f}",
            "%%",
            "+/",
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let computed = computed(b"x");
        for _ in 0..20_000 {
            let mut h = HeaderMap::new();
            for _ in 0..next(4) {
                let value: String = (0..next(4)).map(|_| pieces[next(pieces.len())]).collect();
                if let Ok(v) = http::HeaderValue::from_str(&value) {
                    h.insert(names[next(names.len())], v);
                }
            }
            if let Ok(r) = RequestChecksum::from_headers(&h) {
                let _ = r.verify(&computed, None);
            }
        }
    }

    #[test]
    fn primary_is_the_clients_algorithm() {
        let mut m = BTreeMap::new();
        m.insert("CRC64NVME".to_string(), "AAAAAAAAAAA=".to_string());
        assert_eq!(primary(&m).unwrap().0, Algorithm::Crc64Nvme);
        m.insert("SHA256".to_string(), "abc-3".to_string());
        let (a, v, t) = primary(&m).unwrap();
        assert_eq!(
            (a, v, t),
            (Algorithm::Sha256, "abc-3", ChecksumType::Composite)
        );
        assert!(primary(&BTreeMap::new()).is_none());
    }
}
