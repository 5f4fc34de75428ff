//! The Blob service REST calls a page-blob upload needs, over blocking HTTP (`ureq`).
//!
//! A SAS URL is its own authorisation: no request is signed, the SAS query goes on every
//! request URL. References: "Put Blob", "Put Page", "Get Page Ranges", "Copy Blob", "Get Blob
//! Properties", "Get Blob", "Delete Blob" in the Azure Blob Storage REST API reference
//! (learn.microsoft.com/rest/api/storageservices/). Every message built here passes through
//! the [`Redactor`], so a SAS never reaches an error.

use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Range;
use std::time::Duration;

use super::url::{PageBlobUrl, Redactor};
use crate::error::{Error, Result};

/// The REST API version sent (`x-ms-version`): 2021-12-02 has every call used here and is
/// served by Azure, Azure Stack Hub 2301+ and Azurite.
pub const API_VERSION: &str = "2021-12-02";
/// Largest Put Page request body (the service's limit).
pub const MAX_PUT_PAGE: usize = 4 << 20;
/// Tries of an idempotent request that failed with a connection error or a 5xx/429.
const TRIES: u32 = 5;

/// What Get Blob Properties says.
#[derive(Debug, Clone, Default)]
pub struct BlobProperties {
    /// `Content-Length`: the blob's length.
    pub len: u64,
    /// `x-ms-blob-type`.
    pub blob_type: String,
    /// `x-ms-meta-*` headers, names lower-cased.
    pub metadata: BTreeMap<String, String>,
    /// `x-ms-copy-status` (pending, success, aborted, failed) when the blob is a copy.
    pub copy_status: Option<String>,
    /// `x-ms-copy-status-description`.
    pub copy_description: Option<String>,
}

/// A client for the blobs of the container a [`PageBlobUrl`] names.
#[derive(Debug)]
pub struct BlobClient {
    agent: ureq::Agent,
    redact: Redactor,
    url: PageBlobUrl,
}

/// A response: status, headers we read, body.
struct Reply {
    status: u16,
    headers: http_headers::Headers,
    body: Vec<u8>,
}

mod http_headers {
    /// Response headers, names lower-cased.
    #[derive(Default)]
    pub struct Headers(pub Vec<(String, String)>);
    impl Headers {
        pub fn get(&self, name: &str) -> Option<&str> {
            self.0
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }
    }
}

impl BlobClient {
    /// A client for the container of `url` (and its SAS).
    pub fn new(url: &PageBlobUrl) -> BlobClient {
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::NativeTls)
            .root_certs(ureq::tls::RootCerts::PlatformVerifier)
            .build();
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls)
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(300)))
            .max_idle_connections_per_host(64)
            .user_agent(concat!("diskconv/", env!("CARGO_PKG_VERSION")))
            .build();
        BlobClient {
            agent: config.new_agent(),
            redact: Redactor::new(url),
            url: url.clone(),
        }
    }

    /// The URL of blob `name` for messages (no query).
    pub fn shown(&self, name: &str) -> String {
        self.url.sibling(name).display()
    }

    fn err(&self, op: &str, detail: String, kind: std::io::ErrorKind) -> Error {
        Error::io(
            self.redact.clean(op),
            std::io::Error::new(kind, self.redact.clean(&detail)),
        )
    }

    /// One request; `body` for PUT. Every call used is idempotent: transport errors and
    /// 5xx/429 answers are retried.
    fn request(
        &self,
        op: &str,
        method: &str,
        name: &str,
        query: &str,
        headers: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> Result<Reply> {
        let url = self.url.sibling(name).request_url(query);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = self.send_once(method, &url, headers, body);
            let retry = match &r {
                Ok(rep) => rep.status >= 500 || rep.status == 429,
                Err(_) => true,
            };
            if !(retry && attempt < TRIES) {
                return r.map_err(|e| {
                    self.err(
                        &format!("{op} ({})", self.shown(name)),
                        e,
                        std::io::ErrorKind::Other,
                    )
                });
            }
            std::thread::sleep(Duration::from_millis(200 << attempt));
        }
    }

    fn send_once(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> std::result::Result<Reply, String> {
        let date = httpdate(std::time::SystemTime::now());
        macro_rules! with_headers {
            ($rb:expr) => {{
                let mut rb = $rb
                    .header("x-ms-version", API_VERSION)
                    .header("x-ms-date", &date);
                for (k, v) in headers {
                    rb = rb.header(*k, v);
                }
                rb
            }};
        }
        let resp = match method {
            "PUT" => with_headers!(self.agent.put(url)).send(body.unwrap_or(&[])),
            "GET" => with_headers!(self.agent.get(url)).call(),
            "HEAD" => with_headers!(self.agent.head(url)).call(),
            "DELETE" => with_headers!(self.agent.delete(url)).call(),
            _ => return Err(format!("internal error: HTTP method {method}")),
        };
        let mut resp = resp.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let headers = http_headers::Headers(
            resp.headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_ascii_lowercase(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
        );
        let mut body = Vec::new();
        if method != "HEAD" {
            resp.body_mut()
                .with_config()
                .limit(64 << 20)
                .reader()
                .read_to_end(&mut body)
                .map_err(|e| format!("reading the response: {e}"))?;
        }
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// An error for an unexpected answer: the HTTP status, the service's error code and what
    /// it means for the user.
    fn status_error(&self, op: &str, name: &str, r: &Reply) -> Error {
        let code = r
            .headers
            .get("x-ms-error-code")
            .map(str::to_string)
            .or_else(|| xml_value(&r.body, "Code"))
            .unwrap_or_default();
        let message = xml_value(&r.body, "Message")
            .map(|m| m.lines().next().unwrap_or_default().to_string())
            .unwrap_or_default();
        let meaning = match code.as_str() {
            "AuthenticationFailed" => {
                " (the SAS was refused: its signature is wrong, or it expired or is not valid \
                 yet)"
            }
            "AuthorizationPermissionMismatch" | "AuthorizationFailure" => {
                " (the SAS lacks a permission this needs: read, create, write and delete on the \
                 container)"
            }
            "AuthorizationResourceTypeMismatch" => {
                " (an account SAS needs the object resource type, srt=o)"
            }
            "ContainerNotFound" => " (the container does not exist: create it first)",
            "BlobNotFound" => " (no such blob)",
            _ => "",
        };
        let kind = match r.status {
            401 | 403 => std::io::ErrorKind::PermissionDenied,
            404 => std::io::ErrorKind::NotFound,
            _ => std::io::ErrorKind::Other,
        };
        let mut detail = format!("HTTP {}", r.status);
        if !code.is_empty() {
            detail.push_str(&format!(" {code}"));
        }
        detail.push_str(meaning);
        if !message.is_empty() {
            detail.push_str(&format!(": {message}"));
        }
        self.err(&format!("{op} ({})", self.shown(name)), detail, kind)
    }

    /// Put Blob: a new, empty page blob of `len` bytes (a multiple of 512) named `name`,
    /// replacing any blob of that name.
    pub fn create_page_blob(&self, name: &str, len: u64) -> Result<()> {
        let op = "creating the page blob";
        let r = self.request(
            op,
            "PUT",
            name,
            "",
            &[
                ("x-ms-blob-type", "PageBlob".into()),
                ("x-ms-blob-content-length", len.to_string()),
                ("x-ms-blob-content-type", "application/octet-stream".into()),
            ],
            Some(&[]),
        )?;
        match r.status {
            201 => Ok(()),
            _ => Err(self.status_error(op, name, &r)),
        }
    }

    /// Put Page: writes `data` (a multiple of 512 bytes, at most 4 MiB) at `offset` (a
    /// multiple of 512).
    pub fn put_page(&self, name: &str, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset + data.len() as u64 - 1;
        let op = format!("writing {} bytes at {offset:#x}", data.len());
        let r = self.request(
            &op,
            "PUT",
            name,
            "comp=page",
            &[
                ("x-ms-page-write", "update".into()),
                ("x-ms-range", format!("bytes={offset}-{end}")),
            ],
            Some(data),
        )?;
        match r.status {
            201 => Ok(()),
            _ => Err(self.status_error(&op, name, &r)),
        }
    }

    /// Put Page with `x-ms-page-write: clear`: makes `range` (512-byte aligned) read as zeros
    /// and frees its pages.
    pub fn clear_pages(&self, name: &str, range: Range<u64>) -> Result<()> {
        let op = format!("clearing bytes {:#x}..{:#x}", range.start, range.end);
        let r = self.request(
            &op,
            "PUT",
            name,
            "comp=page",
            &[
                ("x-ms-page-write", "clear".into()),
                (
                    "x-ms-range",
                    format!("bytes={}-{}", range.start, range.end - 1),
                ),
            ],
            Some(&[]),
        )?;
        match r.status {
            201 => Ok(()),
            _ => Err(self.status_error(&op, name, &r)),
        }
    }

    /// Get Page Ranges: the ranges of `name` (a blob of `len` bytes) that hold pages (written
    /// and not cleared), sorted, adjacent ones merged. Asked for 16 GiB at a time, as the
    /// service's documentation advises for fragmented blobs (a whole-blob list can time out).
    pub fn page_ranges(&self, name: &str, len: u64) -> Result<Vec<Range<u64>>> {
        const WINDOW: u64 = 16 << 30;
        let mut out: Vec<Range<u64>> = Vec::new();
        let mut at = 0;
        while at < len {
            let end = (at + WINDOW).min(len);
            self.page_ranges_in(name, at..end, &mut out)?;
            at = end;
        }
        Ok(out)
    }

    fn page_ranges_in(
        &self,
        name: &str,
        window: Range<u64>,
        out: &mut Vec<Range<u64>>,
    ) -> Result<()> {
        let op = "listing the page ranges";
        let mut marker = String::new();
        let range = format!("bytes={}-{}", window.start, window.end - 1);
        // The service pages long lists (NextMarker); bound the walk all the same.
        for _ in 0..1_000_000 {
            let q = if marker.is_empty() {
                "comp=pagelist".to_string()
            } else {
                format!("comp=pagelist&marker={}", query_escape(&marker))
            };
            let r = self.request(op, "GET", name, &q, &[("x-ms-range", range.clone())], None)?;
            if r.status != 200 {
                return Err(self.status_error(op, name, &r));
            }
            let text = String::from_utf8_lossy(&r.body);
            for block in text.split("<PageRange>").skip(1) {
                let start = xml_value(block.as_bytes(), "Start").and_then(|v| v.parse().ok());
                let end = xml_value(block.as_bytes(), "End").and_then(|v| v.parse::<u64>().ok());
                match (start, end) {
                    (Some(s), Some(e)) if e >= s => {
                        // Clipped to the window asked for.
                        let range = s.max(window.start)..(e + 1).min(window.end);
                        if range.is_empty() {
                            continue;
                        }
                        match out.last_mut() {
                            Some(last) if last.end == range.start => last.end = range.end,
                            Some(last) if last.end > range.start => {
                                return Err(self.err(
                                    &format!("{op} ({})", self.shown(name)),
                                    "the service's page list is not in ascending order".into(),
                                    std::io::ErrorKind::InvalidData,
                                ));
                            }
                            _ => out.push(range),
                        }
                    }
                    _ => {
                        return Err(self.err(
                            &format!("{op} ({})", self.shown(name)),
                            "the service's page list has a range without a valid Start and End"
                                .into(),
                            std::io::ErrorKind::InvalidData,
                        ));
                    }
                }
            }
            marker = xml_value(r.body.as_slice(), "NextMarker").unwrap_or_default();
            if marker.is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// Get Blob Properties; `None` when there is no such blob.
    pub fn properties(&self, name: &str) -> Result<Option<BlobProperties>> {
        let op = "reading the blob's properties";
        let r = self.request(op, "HEAD", name, "", &[], None)?;
        match r.status {
            200 => {}
            404 => return Ok(None),
            _ => return Err(self.status_error(op, name, &r)),
        }
        let mut p = BlobProperties {
            len: r
                .headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            blob_type: r.headers.get("x-ms-blob-type").unwrap_or("").to_string(),
            copy_status: r.headers.get("x-ms-copy-status").map(str::to_string),
            copy_description: r
                .headers
                .get("x-ms-copy-status-description")
                .map(str::to_string),
            ..Default::default()
        };
        for (k, v) in &r.headers.0 {
            if let Some(m) = k.strip_prefix("x-ms-meta-") {
                p.metadata.insert(m.to_string(), v.clone());
            }
        }
        Ok(Some(p))
    }

    /// Copy Blob: copies `from` onto `to` in the same container, with `metadata` on the copy;
    /// returns the copy status the service answered (`success` or `pending`).
    pub fn copy_blob(&self, from: &str, to: &str, metadata: &[(&str, String)]) -> Result<String> {
        let op = format!("copying the temporary blob {} to", self.shown(from));
        let source = self.url.sibling(from).request_url("");
        let mut headers: Vec<(String, String)> = vec![("x-ms-copy-source".into(), source)];
        for (k, v) in metadata {
            headers.push((format!("x-ms-meta-{k}"), v.clone()));
        }
        let hdrs: Vec<(&str, String)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let r = self.request(&op, "PUT", to, "", &hdrs, Some(&[]))?;
        match r.status {
            202 | 201 => Ok(r
                .headers
                .get("x-ms-copy-status")
                .unwrap_or("success")
                .to_string()),
            _ => Err(self.status_error(&op, to, &r)),
        }
    }

    /// Set Blob Properties (the content type, `application/octet-stream`). After a concluded
    /// Copy Blob this also drops the blob's copy properties, whose `x-ms-copy-source` would
    /// otherwise keep the source URL, SAS included, readable by anyone who may read the blob's
    /// properties (Get Blob Properties: the `x-ms-copy-*` headers are not returned once the
    /// blob "has been modified after a concluded Copy Blob operation using Set Blob
    /// Properties").
    pub fn set_properties(&self, name: &str) -> Result<()> {
        let op = "setting the blob's properties";
        let r = self.request(
            op,
            "PUT",
            name,
            "comp=properties",
            &[("x-ms-blob-content-type", "application/octet-stream".into())],
            Some(&[]),
        )?;
        match r.status {
            200 => Ok(()),
            _ => Err(self.status_error(op, name, &r)),
        }
    }

    /// Delete Blob; a missing blob is no error. Returns whether one was deleted.
    pub fn delete_blob(&self, name: &str) -> Result<bool> {
        let op = "deleting the blob";
        let r = self.request(op, "DELETE", name, "", &[], None)?;
        match r.status {
            202 | 200 => Ok(true),
            404 => Ok(false),
            _ => Err(self.status_error(op, name, &r)),
        }
    }

    /// Get Blob of `buf.len()` bytes at `offset`.
    pub fn read_range(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let op = format!("reading {} bytes at {offset:#x}", buf.len());
        let end = offset + buf.len() as u64 - 1;
        let r = self.request(
            &op,
            "GET",
            name,
            "",
            &[("x-ms-range", format!("bytes={offset}-{end}"))],
            None,
        )?;
        if r.status != 206 && r.status != 200 {
            return Err(self.status_error(&op, name, &r));
        }
        if r.body.len() != buf.len() {
            return Err(self.err(
                &format!("{op} ({})", self.shown(name)),
                format!("the service sent {} bytes", r.body.len()),
                std::io::ErrorKind::UnexpectedEof,
            ));
        }
        buf.copy_from_slice(&r.body);
        Ok(())
    }
}

/// `s` percent-encoded for a query value.
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The text of the first `<tag>...</tag>` in `xml` (no entities other than the five XML ones).
fn xml_value(xml: &[u8], tag: &str) -> Option<String> {
    let t = String::from_utf8_lossy(xml);
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = t.find(&open)? + open.len();
    let len = t[start..].find(&close)?;
    Some(
        t[start..start + len]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// An RFC 1123 date (`x-ms-date`).
fn httpdate(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86400;
    let rem = secs % 86400;
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // 1970-01-01 was a Thursday.
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(mo - 1) as usize];
    format!("{wd}, {d:02} {month} {y} {h:02}:{m:02}:{s:02} GMT")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(httpdate(t), "Tue, 14 Nov 2023 22:13:20 GMT");
        assert_eq!(
            httpdate(std::time::UNIX_EPOCH),
            "Thu, 01 Jan 1970 00:00:00 GMT"
        );
    }

    #[test]
    fn xml_values() {
        let x = b"<?xml version=\"1.0\"?><Error><Code>ContainerNotFound</Code><Message>The \
                  specified container does not exist.\nRequestId:1</Message></Error>";
        assert_eq!(xml_value(x, "Code").unwrap(), "ContainerNotFound");
        assert!(
            xml_value(x, "Message")
                .unwrap()
                .starts_with("The specified")
        );
        assert!(xml_value(x, "Nope").is_none());
    }
}
