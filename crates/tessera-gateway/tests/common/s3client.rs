//! A minimal S3 client for tests: raw HTTP/1.1 requests signed with SigV4
//! (header auth), so the tests see exactly what the gateway answers.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// URI-encodes per SigV4 (unreserved kept; '/' kept only in paths).
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
    /// The `<Code>` of an S3 XML error.
    pub fn code(&self) -> String {
        let t = self.text();
        match (t.find("<Code>"), t.find("</Code>")) {
            (Some(a), Some(b)) if a + 6 <= b => t[a + 6..b].to_string(),
            _ => String::new(),
        }
    }
}

#[derive(Clone)]
pub struct S3Client {
    pub endpoint: String,
    pub access: Option<(String, String)>,
    pub region: String,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl S3Client {
    pub fn new(endpoint: &str, access: Option<(&str, &str)>) -> Self {
        S3Client {
            endpoint: endpoint.to_string(),
            access: access.map(|(a, s)| (a.to_string(), s.to_string())),
            region: "us-east-1".into(),
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends `method path?query` with `headers` and `body`, signed unless
    /// the client has no key. `path` is the decoded path ("/bucket/key").
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Resp {
        let host = self.endpoint.trim_start_matches("http://").to_string();
        let enc_path = uri_encode(path, true);
        let mut q: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
            .collect();
        q.sort();
        let qs = q
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let uri = if qs.is_empty() {
            format!("{}{}", self.endpoint, enc_path)
        } else {
            format!("{}{}?{}", self.endpoint, enc_path, qs)
        };
        let mut req = http::Request::builder().method(method).uri(&uri);
        let mut all: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        if let Some((ak, sk)) = &self.access {
            let now = time::OffsetDateTime::now_utc();
            let amz_date = format!(
                "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
                now.year(),
                now.month() as u8,
                now.day(),
                now.hour(),
                now.minute(),
                now.second()
            );
            let date = &amz_date[..8];
            let payload = if all.iter().any(|(k, _)| k == "x-amz-content-sha256") {
                all.iter()
                    .find(|(k, _)| k == "x-amz-content-sha256")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            } else {
                let h = hex::encode(Sha256::digest(&body));
                all.push(("x-amz-content-sha256".into(), h.clone()));
                h
            };
            all.push(("x-amz-date".into(), amz_date.clone()));
            all.push(("host".into(), host.clone()));
            all.sort();
            let signed: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
            let signed = signed.join(";");
            let canon_headers: String = all.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
            let canonical =
                format!("{method}\n{enc_path}\n{qs}\n{canon_headers}\n{signed}\n{payload}");
            let scope = format!("{date}/{}/s3/aws4_request", self.region);
            let sts = format!(
                "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
                hex::encode(Sha256::digest(canonical.as_bytes()))
            );
            let k = hmac(format!("AWS4{sk}").as_bytes(), date.as_bytes());
            let k = hmac(&k, self.region.as_bytes());
            let k = hmac(&k, b"s3");
            let k = hmac(&k, b"aws4_request");
            let sig = hex::encode(hmac(&k, sts.as_bytes()));
            all.retain(|(k, _)| k != "host");
            all.push((
                "authorization".into(),
                format!(
                    "AWS4-HMAC-SHA256 Credential={ak}/{scope}, SignedHeaders={signed}, Signature={sig}"
                ),
            ));
        }
        for (k, v) in &all {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req.body(Full::new(Bytes::from(body))).expect("request");
        let resp = self.http.request(req).await.expect("http request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send("GET", path, &[], &[], vec![]).await
    }
    pub async fn put(&self, path: &str, body: Vec<u8>) -> Resp {
        self.send("PUT", path, &[], &[], body).await
    }
    pub async fn delete(&self, path: &str) -> Resp {
        self.send("DELETE", path, &[], &[], vec![]).await
    }
    pub async fn head(&self, path: &str) -> Resp {
        self.send("HEAD", path, &[], &[], vec![]).await
    }
}
