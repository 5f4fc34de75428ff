//! A small signed-REST S3 client over blocking `ureq`: the calls a multipart upload, its
//! resume and its verification need (see `Cargo.toml` for why not `object_store` or the AWS
//! SDK).
//!
//! Every request is signed with AWS Signature Version 4 ([`super::sigv4`]); the payload hash is
//! the SHA-256 of the body. Errors name the operation, the object (`s3://bucket/key`), the HTTP
//! status and S3's error code and message; never a credential (the request's headers and S3's
//! echo of the string to sign are not included).

use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::S3Url;
use super::credentials::S3Config;
use super::sigv4::{self, EMPTY_SHA256, hex};
use crate::error::{Error, Result};

/// User metadata key (`x-amz-meta-sha256`) holding the hex SHA-256 of the whole object.
pub const META_SHA256: &str = "sha256";

/// The body of a request.
pub enum Body<'a> {
    /// No body.
    Empty,
    /// Bytes in memory.
    Bytes(&'a [u8]),
    /// `len` bytes of a file from its start.
    File(&'a std::fs::File, u64),
}

/// One part of a multipart upload as the store lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedPart {
    /// Part number (1..=10000).
    pub number: u32,
    /// Size in bytes.
    pub size: u64,
    /// The ETag the store gave the part (quotes removed); `None` when the store does not list
    /// it (s3s-fs 0.14 does not).
    pub etag: Option<String>,
}

/// What `HeadObject` says of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHead {
    /// Size in bytes.
    pub size: u64,
    /// ETag (quotes removed).
    pub etag: String,
    /// The `x-amz-meta-sha256` metadata, when present.
    pub sha256: Option<String>,
}

/// A client for one bucket.
pub struct S3Client {
    cfg: S3Config,
    agent: ureq::Agent,
    bucket: String,
    scheme: String,
    host: String,
}

impl std::fmt::Debug for S3Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Client")
            .field("endpoint", &self.cfg.endpoint)
            .field("bucket", &self.bucket)
            .field("path_style", &self.cfg.path_style)
            .finish()
    }
}

/// A reply read whole.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Attempts of a request that failed on the network or with a 5xx reply.
const ATTEMPTS: u32 = 3;
/// Largest error or XML reply read (bigger ones are cut).
const MAX_REPLY: u64 = 16 << 20;

fn unquote(s: &str) -> String {
    s.trim().trim_matches('"').to_string()
}

/// The text of the first descendant element of `node` named `name`.
fn xml_text<'a>(node: roxmltree::Node<'a, 'a>, name: &str) -> Option<&'a str> {
    node.descendants()
        .find(|n| n.is_element() && n.tag_name().name() == name)
        .and_then(|n| n.text())
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl S3Client {
    /// A client for `bucket` with `cfg`.
    pub fn new(cfg: S3Config, bucket: &str) -> Result<S3Client> {
        let (scheme, host) = cfg.endpoint.split_once("://").ok_or_else(|| {
            Error::InvalidArgument(format!("the endpoint '{}' has no scheme", cfg.endpoint))
        })?;
        let host = if cfg.path_style {
            host.to_string()
        } else {
            format!("{bucket}.{host}")
        };
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(300)))
            .max_idle_connections_per_host(32)
            .build();
        Ok(S3Client {
            scheme: scheme.to_string(),
            host,
            bucket: bucket.to_string(),
            agent: ureq::Agent::new_with_config(config),
            cfg,
        })
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> &str {
        &self.cfg.endpoint
    }

    fn path(&self, key: &str) -> String {
        let k = sigv4::uri_encode(key, true);
        if self.cfg.path_style {
            if key.is_empty() {
                format!("/{}", self.bucket)
            } else {
                format!("/{}/{k}", self.bucket)
            }
        } else {
            format!("/{k}")
        }
    }

    fn url_of(&self, key: &str) -> String {
        S3Url {
            bucket: self.bucket.clone(),
            key: key.to_string(),
        }
        .to_string()
    }

    /// Sends one signed request and reads the reply, retrying network failures and 5xx
    /// replies.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        op: &str,
        method: &str,
        key: &str,
        query: &[(String, String)],
        headers: &[(String, String)],
        body: &Body<'_>,
        payload_sha256: &str,
    ) -> Result<Reply> {
        let mut last: Option<Error> = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200 << attempt));
            }
            match self.send_once(op, method, key, query, headers, body, payload_sha256) {
                Ok(r) if r.status >= 500 => last = Some(self.reply_error(op, key, &r)),
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Internal("no attempt made".into())))
    }

    #[allow(clippy::too_many_arguments)]
    fn send_once(
        &self,
        op: &str,
        method: &str,
        key: &str,
        query: &[(String, String)],
        headers: &[(String, String)],
        body: &Body<'_>,
        payload_sha256: &str,
    ) -> Result<Reply> {
        let path = self.path(key);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let signed = sigv4::sign(
            &sigv4::Request {
                method,
                host: &self.host,
                path: &path,
                query,
                headers,
                payload_sha256,
            },
            &self.cfg.credentials,
            &self.cfg.region,
            now,
        );
        let q = sigv4::canonical_query(query);
        let uri = if q.is_empty() {
            format!("{}://{}{path}", self.scheme, self.host)
        } else {
            format!("{}://{}{path}?{q}", self.scheme, self.host)
        };
        let net_err = |e: ureq::Error| {
            Error::io(
                format!("S3 {op} of {}", self.url_of(key)),
                std::io::Error::other(format!("{} ({e})", self.cfg.endpoint)),
            )
        };
        let mut b = ureq::http::Request::builder().method(method).uri(&uri);
        for (k, v) in &signed {
            b = b.header(k.as_str(), v.as_str());
        }
        let len = match body {
            Body::Empty => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::File(_, n) => *n,
        };
        if method == "PUT" || method == "POST" {
            b = b.header("content-length", len.to_string());
        }
        let req = |b: ureq::http::request::Builder| {
            b.body(()).map_err(|e| {
                Error::InvalidArgument(format!(
                    "cannot build the S3 request for {}: {e}",
                    self.url_of(key)
                ))
            })
        };
        let resp = match body {
            Body::Empty => self.agent.run(req(b)?),
            Body::Bytes(bytes) => {
                let (parts, ()) = req(b)?.into_parts();
                self.agent
                    .run(ureq::http::Request::from_parts(parts, *bytes))
            }
            Body::File(f, n) => {
                use std::io::Seek;
                let mut f = *f;
                f.seek(std::io::SeekFrom::Start(0))
                    .map_err(|e| Error::io("rewinding the spooled part", e))?;
                let mut r = f.take(*n);
                let (parts, ()) = req(b)?.into_parts();
                self.agent.run(ureq::http::Request::from_parts(
                    parts,
                    ureq::SendBody::from_reader(&mut r),
                ))
            }
        }
        .map_err(net_err)?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut body = Vec::new();
        if method != "HEAD" {
            resp.into_body()
                .into_reader()
                .take(MAX_REPLY)
                .read_to_end(&mut body)
                .map_err(|e| {
                    Error::io(
                        format!("S3 {op} of {}: reading the reply", self.url_of(key)),
                        e,
                    )
                })?;
        }
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// The error of a reply that is not a success: S3's code and message, with a hint for the
    /// common ones.
    fn reply_error(&self, op: &str, key: &str, r: &Reply) -> Error {
        let text = String::from_utf8_lossy(&r.body);
        let (code, message) = match roxmltree::Document::parse(&text) {
            Ok(doc) => (
                xml_text(doc.root(), "Code").map(str::to_string),
                xml_text(doc.root(), "Message").map(str::to_string),
            ),
            Err(_) => (None, None),
        };
        let code = code.unwrap_or_else(|| match r.status {
            403 => "AccessDenied".into(),
            404 if key.is_empty() => "NoSuchBucket".into(),
            404 => "NoSuchKey".into(),
            _ => String::new(),
        });
        let hint = match code.as_str() {
            "NoSuchBucket" => format!(": the bucket '{}' does not exist", self.bucket),
            "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied" => {
                ": check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the \
                 profile), the region and the bucket's permissions"
                    .to_string()
            }
            "NoSuchUpload" => ": the multipart upload no longer exists".to_string(),
            _ => String::new(),
        };
        let mut msg = format!("HTTP {}", r.status);
        if !code.is_empty() {
            msg.push_str(&format!(" {code}"));
        }
        if let Some(m) = message.filter(|m| !m.is_empty()) {
            // S3's messages name the operation's parameters, never the secret.
            msg.push_str(&format!(" ({})", m.chars().take(300).collect::<String>()));
        }
        msg.push_str(&hint);
        if code == "NoSuchBucket"
            || code == "InvalidAccessKeyId"
            || code == "SignatureDoesNotMatch"
            || code == "AccessDenied"
            || code == "InvalidBucketName"
        {
            Error::InvalidArgument(format!(
                "S3 {op} of {} at {} failed: {msg}",
                self.url_of(key),
                self.cfg.endpoint
            ))
        } else {
            Error::io(
                format!("S3 {op} of {} at {}", self.url_of(key), self.cfg.endpoint),
                std::io::Error::other(msg),
            )
        }
    }

    fn ok(&self, op: &str, key: &str, r: Reply) -> Result<Reply> {
        if (200..300).contains(&r.status) {
            // CompleteMultipartUpload and CopyObject may answer 200 with an error document.
            if r.body.starts_with(b"<?xml") || r.body.starts_with(b"<Error") {
                let text = String::from_utf8_lossy(&r.body);
                if let Ok(doc) = roxmltree::Document::parse(&text) {
                    if doc.root_element().tag_name().name() == "Error" {
                        return Err(self.reply_error(op, key, &Reply { status: 500, ..r }));
                    }
                }
            }
            Ok(r)
        } else {
            Err(self.reply_error(op, key, &r))
        }
    }

    fn xml<T>(
        &self,
        op: &str,
        key: &str,
        r: &Reply,
        f: impl FnOnce(roxmltree::Node<'_, '_>) -> Option<T>,
    ) -> Result<T> {
        let text = String::from_utf8_lossy(&r.body);
        let doc = roxmltree::Document::parse(&text).map_err(|e| {
            Error::InvalidFormat(format!(
                "S3 {op} of {}: the reply is not valid XML: {e}",
                self.url_of(key)
            ))
        })?;
        f(doc.root()).ok_or_else(|| {
            Error::InvalidFormat(format!(
                "S3 {op} of {}: the reply lacks an expected element",
                self.url_of(key)
            ))
        })
    }

    /// HeadBucket: the bucket exists and the credentials may reach it.
    pub fn check_bucket(&self) -> Result<()> {
        let r = self.send(
            "HeadBucket",
            "HEAD",
            "",
            &[],
            &[],
            &Body::Empty,
            EMPTY_SHA256,
        )?;
        self.ok("HeadBucket", "", r).map(|_| ())
    }

    /// CreateMultipartUpload; returns the upload id.
    pub fn create_multipart(&self, key: &str, metadata: &[(&str, &str)]) -> Result<String> {
        let q = [("uploads".to_string(), String::new())];
        let h: Vec<(String, String)> = metadata
            .iter()
            .map(|(k, v)| (format!("x-amz-meta-{k}"), v.to_string()))
            .collect();
        let op = "CreateMultipartUpload";
        let r = self.send(op, "POST", key, &q, &h, &Body::Empty, EMPTY_SHA256)?;
        let r = self.ok(op, key, r)?;
        self.xml(op, key, &r, |root| {
            xml_text(root, "UploadId").map(str::to_string)
        })
    }

    /// UploadPart; returns the part's ETag. `sha256` is the hex SHA-256 of the body.
    pub fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: &Body<'_>,
        sha256: &str,
    ) -> Result<String> {
        let q = [
            ("partNumber".to_string(), number.to_string()),
            ("uploadId".to_string(), upload_id.to_string()),
        ];
        let op = "UploadPart";
        let r = self.send(op, "PUT", key, &q, &[], body, sha256)?;
        let r = self.ok(op, key, r)?;
        r.header("etag").map(unquote).ok_or_else(|| {
            Error::InvalidFormat(format!(
                "S3 UploadPart {number} of {}: the reply has no ETag",
                self.url_of(key)
            ))
        })
    }

    /// ListParts: every part uploaded so far (all pages).
    pub fn list_parts(&self, key: &str, upload_id: &str) -> Result<Vec<ListedPart>> {
        let op = "ListParts";
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut q = vec![("uploadId".to_string(), upload_id.to_string())];
            if let Some(m) = &marker {
                q.push(("part-number-marker".to_string(), m.clone()));
            }
            let r = self.send(op, "GET", key, &q, &[], &Body::Empty, EMPTY_SHA256)?;
            let r = self.ok(op, key, r)?;
            let (parts, next) = self.xml(op, key, &r, |root| {
                let mut parts = Vec::new();
                for p in root
                    .descendants()
                    .filter(|n| n.is_element() && n.tag_name().name() == "Part")
                {
                    parts.push(ListedPart {
                        number: xml_text(p, "PartNumber")?.trim().parse().ok()?,
                        size: xml_text(p, "Size")?.trim().parse().ok()?,
                        etag: xml_text(p, "ETag").map(unquote),
                    });
                }
                let truncated = xml_text(root, "IsTruncated").is_some_and(|t| t.trim() == "true");
                let next = if truncated {
                    xml_text(root, "NextPartNumberMarker").map(str::to_string)
                } else {
                    None
                };
                Some((parts, next))
            })?;
            let progressed = !parts.is_empty();
            out.extend(parts);
            match next {
                Some(n) if progressed && marker.as_deref() != Some(n.as_str()) => marker = Some(n),
                _ => break,
            }
        }
        Ok(out)
    }

    /// CompleteMultipartUpload with `parts` (number, ETag) in ascending order.
    pub fn complete(&self, key: &str, upload_id: &str, parts: &[(u32, String)]) -> Result<()> {
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (n, etag) in parts {
            xml.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>\"{}\"</ETag></Part>",
                xml_escape(etag)
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let sha = hex(&Sha256::digest(xml.as_bytes()));
        let q = [("uploadId".to_string(), upload_id.to_string())];
        let op = "CompleteMultipartUpload";
        let r = self.send(op, "POST", key, &q, &[], &Body::Bytes(xml.as_bytes()), &sha)?;
        self.ok(op, key, r).map(|_| ())
    }

    /// AbortMultipartUpload.
    pub fn abort(&self, key: &str, upload_id: &str) -> Result<()> {
        let q = [("uploadId".to_string(), upload_id.to_string())];
        let op = "AbortMultipartUpload";
        let r = self.send(op, "DELETE", key, &q, &[], &Body::Empty, EMPTY_SHA256)?;
        // Already gone is what an abort wants.
        if r.status == 404 {
            return Ok(());
        }
        self.ok(op, key, r).map(|_| ())
    }

    /// ListMultipartUploads of keys starting with `prefix`: (key, upload id) pairs (first
    /// page).
    pub fn list_uploads(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let q = [
            ("uploads".to_string(), String::new()),
            ("prefix".to_string(), prefix.to_string()),
        ];
        let op = "ListMultipartUploads";
        let r = self.send(op, "GET", "", &q, &[], &Body::Empty, EMPTY_SHA256)?;
        let r = self.ok(op, "", r)?;
        self.xml(op, "", &r, |root| {
            Some(
                root.descendants()
                    .filter(|n| n.is_element() && n.tag_name().name() == "Upload")
                    .filter_map(|u| {
                        Some((
                            xml_text(u, "Key")?.to_string(),
                            xml_text(u, "UploadId")?.to_string(),
                        ))
                    })
                    .collect(),
            )
        })
    }

    /// HeadObject; `None` when there is no such object.
    pub fn head(&self, key: &str) -> Result<Option<ObjectHead>> {
        let op = "HeadObject";
        let r = self.send(op, "HEAD", key, &[], &[], &Body::Empty, EMPTY_SHA256)?;
        if r.status == 404 {
            return Ok(None);
        }
        let r = self.ok(op, key, r)?;
        let size = r
            .header("content-length")
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                Error::InvalidFormat(format!(
                    "S3 HeadObject of {}: the reply has no Content-Length",
                    self.url_of(key)
                ))
            })?;
        Ok(Some(ObjectHead {
            size,
            etag: r.header("etag").map(unquote).unwrap_or_default(),
            sha256: r
                .header(&format!("x-amz-meta-{META_SHA256}"))
                .map(|v| v.trim().to_ascii_lowercase()),
        }))
    }

    /// Ranged GetObject: `buf.len()` bytes at `offset` (fewer only at the end of the object).
    pub fn get_range(&self, key: &str, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let end = offset + buf.len() as u64 - 1;
        let h = [("range".to_string(), format!("bytes={offset}-{end}"))];
        let op = "GetObject";
        let r = self.send(op, "GET", key, &[], &h, &Body::Empty, EMPTY_SHA256)?;
        if r.status == 416 {
            return Ok(0);
        }
        let r = self.ok(op, key, r)?;
        if r.status != 206 && offset > 0 {
            return Err(Error::Unsupported(format!(
                "S3 GetObject of {}: the store ignored the Range header (HTTP {})",
                self.url_of(key),
                r.status
            )));
        }
        let n = r.body.len().min(buf.len());
        buf[..n].copy_from_slice(&r.body[..n]);
        Ok(n)
    }

    /// CopyObject of `key` onto itself with the metadata replaced (objects up to 5 GiB).
    pub fn copy_self_with_metadata(&self, key: &str, metadata: &[(&str, &str)]) -> Result<()> {
        let mut h: Vec<(String, String)> = metadata
            .iter()
            .map(|(k, v)| (format!("x-amz-meta-{k}"), v.to_string()))
            .collect();
        h.push(("x-amz-copy-source".into(), self.copy_source(key)));
        h.push(("x-amz-metadata-directive".into(), "REPLACE".into()));
        let op = "CopyObject";
        let r = self.send(op, "PUT", key, &[], &h, &Body::Empty, EMPTY_SHA256)?;
        self.ok(op, key, r).map(|_| ())
    }

    /// UploadPartCopy of bytes `range` (inclusive end) of `key` into part `number` of
    /// `upload_id` (for the same key); returns the part's ETag.
    pub fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        first: u64,
        last: u64,
    ) -> Result<String> {
        let q = [
            ("partNumber".to_string(), number.to_string()),
            ("uploadId".to_string(), upload_id.to_string()),
        ];
        let h = [
            ("x-amz-copy-source".to_string(), self.copy_source(key)),
            (
                "x-amz-copy-source-range".to_string(),
                format!("bytes={first}-{last}"),
            ),
        ];
        let op = "UploadPartCopy";
        let r = self.send(op, "PUT", key, &q, &h, &Body::Empty, EMPTY_SHA256)?;
        let r = self.ok(op, key, r)?;
        self.xml(op, key, &r, |root| xml_text(root, "ETag").map(unquote))
    }

    fn copy_source(&self, key: &str) -> String {
        format!("/{}/{}", self.bucket, sigv4::uri_encode(key, true))
    }

    /// GetObject of the whole object, streamed to `f` in pieces.
    pub fn get_streamed(&self, key: &str, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<u64> {
        let op = "GetObject";
        let path = self.path(key);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let signed = sigv4::sign(
            &sigv4::Request {
                method: "GET",
                host: &self.host,
                path: &path,
                query: &[],
                headers: &[],
                payload_sha256: EMPTY_SHA256,
            },
            &self.cfg.credentials,
            &self.cfg.region,
            now,
        );
        let mut b = ureq::http::Request::builder()
            .method("GET")
            .uri(format!("{}://{}{path}", self.scheme, self.host));
        for (k, v) in &signed {
            b = b.header(k.as_str(), v.as_str());
        }
        let req = b
            .body(())
            .map_err(|e| Error::InvalidArgument(format!("cannot build the S3 request: {e}")))?;
        let io_err = |e: std::io::Error| Error::io(format!("S3 {op} of {}", self.url_of(key)), e);
        let resp = self
            .agent
            .run(req)
            .map_err(|e| io_err(std::io::Error::other(e.to_string())))?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let mut body = Vec::new();
            let _ = resp
                .into_body()
                .into_reader()
                .take(MAX_REPLY)
                .read_to_end(&mut body);
            return Err(self.reply_error(
                op,
                key,
                &Reply {
                    status,
                    headers: Vec::new(),
                    body,
                },
            ));
        }
        let mut reader = resp.into_body().into_with_config().limit(u64::MAX).reader();
        let mut buf = vec![0u8; 4 << 20];
        let mut total = 0u64;
        loop {
            let n = reader.read(&mut buf).map_err(io_err)?;
            if n == 0 {
                break;
            }
            f(&buf[..n])?;
            total += n as u64;
        }
        Ok(total)
    }
}
