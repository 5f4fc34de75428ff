//! Azure page-blob URLs with a shared access signature (SAS): parsing, and keeping the SAS out
//! of everything printed.
//!
//! Two layouts (as Azure's SDKs tell them apart): a DNS host names the account
//! (`https://ACCOUNT.blob.core.windows.net/CONTAINER/NAME.vhd?SAS`, Azure Stack's
//! `https://ACCOUNT.blob.REGION.DOMAIN/...` too); an IP address or `localhost` (the emulator
//! Azurite, `http://127.0.0.1:10000/devstoreaccount1/CONTAINER/NAME.vhd?SAS`) carries the
//! account as the first path segment.

use std::fmt;
use std::path::Path;

use crate::error::{Error, Result};

/// A page blob given by URL, its SAS query kept apart so that it is only ever sent, never
/// shown: [`fmt::Display`] and [`PageBlobUrl::display`] print the URL without its query.
#[derive(Clone, PartialEq, Eq)]
pub struct PageBlobUrl {
    /// `http` or `https`.
    scheme: String,
    /// `host[:port]`.
    authority: String,
    /// The path up to the container: empty for a DNS host, `/ACCOUNT` for path-style URLs.
    account_path: String,
    /// The container.
    container: String,
    /// The blob's name inside the container, as written in the URL (percent-encoded).
    name: String,
    /// The SAS query (without the `?`): the credential.
    sas: String,
}

impl fmt::Debug for PageBlobUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the SAS, not even in debug output.
        f.debug_struct("PageBlobUrl")
            .field("url", &self.display())
            .finish()
    }
}

impl fmt::Display for PageBlobUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

/// Whether `query` (without `?`) has a `sig=` parameter: a SAS.
fn has_signature(query: &str) -> bool {
    query
        .split('&')
        .any(|p| p.split_once('=').is_some_and(|(k, _)| k == "sig"))
}

/// The value of parameter `key` in `query`.
fn param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Whether the URL `s` is an `http(s)://` URL at all (an Azure destination or a mistake).
pub fn is_http_url(s: &str) -> bool {
    let l = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    l.starts_with("http://") || l.starts_with("https://")
}

impl PageBlobUrl {
    /// `Ok(Some(url))` when `target` is an `http(s)://` URL whose query is a SAS (has `sig=`),
    /// `Ok(None)` when it is no `http(s)` URL (a local path, `nbd://`, `s3://`), and an error
    /// for an `http(s)` URL that cannot be a page blob with a SAS (the error never repeats
    /// the query).
    pub fn detect(target: &Path) -> Result<Option<PageBlobUrl>> {
        let Some(s) = target.to_str() else {
            return Ok(None);
        };
        if !is_http_url(s) {
            return Ok(None);
        }
        Self::parse(s).map(Some)
    }

    /// Parses `https://ACCOUNT.blob.core.windows.net/CONTAINER/NAME?SAS` or a path-style
    /// `http://HOST:PORT/ACCOUNT/CONTAINER/NAME?SAS`.
    pub fn parse(s: &str) -> Result<PageBlobUrl> {
        let (base, query) = match s.split_once('?') {
            Some((b, q)) => (b, q),
            None => (s, ""),
        };
        let bad = |why: &str| {
            Error::InvalidArgument(format!(
                "{base}: {why} (an Azure page blob is given as \
                 https://ACCOUNT.blob.core.windows.net/CONTAINER/NAME.vhd?SAS, the SAS being a \
                 container SAS with read, create, write and delete permissions)"
            ))
        };
        if base.contains('#') || query.contains('#') {
            return Err(bad("the URL has a fragment (#)"));
        }
        if !has_signature(query) {
            return Err(bad(
                "the URL has no shared access signature (no sig= in its query); diskconv \
                 writes to Azure only with a SAS URL",
            ));
        }
        if param(query, "sr") == Some("b") {
            return Err(bad(
                "the SAS is for one blob (sr=b): diskconv writes the upload into a temporary \
                 blob beside NAME and copies it to NAME at the end, which needs a container \
                 SAS (sr=c) or an account SAS",
            ));
        }
        let (scheme, rest) = base
            .split_once("://")
            .ok_or_else(|| bad("not an http(s) URL"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(bad("not an http(s) URL"));
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("the URL has no host, or user information before it"));
        }
        let host = host_of(authority);
        let path_style = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok();
        let mut parts = path.splitn(if path_style { 3 } else { 2 }, '/');
        let account_path = if path_style {
            match parts.next() {
                Some(a) if !a.is_empty() => format!("/{a}"),
                _ => return Err(bad("the URL names no account (path-style: /ACCOUNT/...)")),
            }
        } else {
            String::new()
        };
        let container = parts.next().unwrap_or_default();
        let name = parts.next().unwrap_or_default();
        if container.is_empty() {
            return Err(bad("the URL names no container"));
        }
        if name.is_empty() || name.ends_with('/') {
            return Err(bad("the URL names no blob inside the container"));
        }
        Ok(PageBlobUrl {
            scheme,
            authority: authority.to_string(),
            account_path,
            container: container.to_string(),
            name: name.to_string(),
            sas: query.to_string(),
        })
    }

    /// The URL without its query: what messages, logs and JSON show.
    pub fn display(&self) -> String {
        format!("{}/{}", self.container_base(), self.name)
    }

    /// `scheme://host[/account]/container`.
    fn container_base(&self) -> String {
        format!(
            "{}://{}{}/{}",
            self.scheme, self.authority, self.account_path, self.container
        )
    }

    /// The blob's name in its container.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The container.
    pub fn container(&self) -> &str {
        &self.container
    }

    /// The same container and SAS, another blob name.
    pub fn sibling(&self, name: &str) -> PageBlobUrl {
        PageBlobUrl {
            name: name.to_string(),
            ..self.clone()
        }
    }

    /// The full URL of the blob with the SAS and `extra` query parameters (`comp=page`):
    /// only ever handed to the HTTP client.
    #[cfg_attr(not(feature = "cloud"), allow(dead_code))]
    pub(crate) fn request_url(&self, extra: &str) -> String {
        let mut u = format!("{}?{}", self.display(), self.sas);
        if !extra.is_empty() {
            u.push('&');
            u.push_str(extra);
        }
        u
    }

    /// The SAS query, for [`Redactor`].
    #[cfg_attr(not(feature = "cloud"), allow(dead_code))]
    pub(crate) fn sas(&self) -> &str {
        &self.sas
    }
}

/// The host of `host[:port]` (IPv6 literals in brackets).
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// Removes a SAS from any text that might have picked it up (an HTTP library's error, a
/// server's message quoting the request): the whole query and the signature alone, raw and
/// percent-decoded.
#[derive(Clone)]
#[cfg_attr(not(feature = "cloud"), allow(dead_code))]
pub(crate) struct Redactor {
    secrets: Vec<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Redactor")
    }
}

#[cfg_attr(not(feature = "cloud"), allow(dead_code))]
impl Redactor {
    pub(crate) fn new(url: &PageBlobUrl) -> Redactor {
        let mut secrets = vec![url.sas().to_string()];
        if let Some(sig) = param(url.sas(), "sig") {
            if !sig.is_empty() {
                secrets.push(sig.to_string());
                let decoded = percent_decode(sig);
                if decoded != sig {
                    secrets.push(decoded);
                }
            }
        }
        secrets.retain(|s| !s.is_empty());
        // Longest first, so the whole query goes before its signature.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Redactor { secrets }
    }

    /// `text` with every secret replaced by `REDACTED`.
    pub(crate) fn clean(&self, text: &str) -> String {
        let mut t = text.to_string();
        for s in &self.secrets {
            if t.contains(s.as_str()) {
                t = t.replace(s.as_str(), "REDACTED");
            }
        }
        t
    }
}

#[cfg_attr(not(feature = "cloud"), allow(dead_code))]
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAS: &str =
        "sv=2021-12-02&ss=b&srt=sco&sp=rwdlc&se=2030-01-01T00:00:00Z&sig=abc%2Bdef%3D";

    #[test]
    fn parses_both_layouts_and_never_shows_the_sas() {
        let u = PageBlobUrl::parse(&format!(
            "https://acct.blob.core.windows.net/disks/vm/web01.vhd?{SAS}"
        ))
        .unwrap();
        assert_eq!(u.container(), "disks");
        assert_eq!(u.name(), "vm/web01.vhd");
        assert_eq!(
            u.display(),
            "https://acct.blob.core.windows.net/disks/vm/web01.vhd"
        );
        assert!(!format!("{u} {u:?}").contains("sig"));
        assert_eq!(
            u.request_url("comp=page"),
            format!("https://acct.blob.core.windows.net/disks/vm/web01.vhd?{SAS}&comp=page")
        );
        let e = PageBlobUrl::parse(&format!(
            "http://127.0.0.1:10000/devstoreaccount1/c/d.vhd?{SAS}"
        ))
        .unwrap();
        assert_eq!(e.container(), "c");
        assert_eq!(e.name(), "d.vhd");
        assert_eq!(
            e.sibling("x.vhd").display(),
            "http://127.0.0.1:10000/devstoreaccount1/c/x.vhd"
        );
    }

    #[test]
    fn refuses_what_cannot_be_a_sas_page_blob_without_echoing_the_query() {
        for bad in [
            "https://a.blob.core.windows.net/c/d.vhd".to_string(),
            "https://a.blob.core.windows.net/c/d.vhd?sv=1&sp=r".to_string(),
            format!("https://a.blob.core.windows.net/c?{SAS}"),
            format!("https://a.blob.core.windows.net/c/?{SAS}"),
            format!("http://127.0.0.1:10000/acct/c?{SAS}"),
            format!("https://a.blob.core.windows.net/c/d.vhd?{SAS}&sr=b"),
            format!("ftp://a/c/d.vhd?{SAS}"),
        ] {
            let e = PageBlobUrl::parse(&bad).unwrap_err().to_string();
            assert!(!e.contains("abc%2B"), "{e}");
            assert!(!e.contains("sp=r"), "{e}");
        }
        assert!(
            PageBlobUrl::detect(Path::new("/tmp/x.vhd"))
                .unwrap()
                .is_none()
        );
        assert!(
            PageBlobUrl::detect(Path::new("s3://b/k"))
                .unwrap()
                .is_none()
        );
        assert!(PageBlobUrl::detect(Path::new("https://a/c/d")).is_err());
    }

    #[test]
    fn redactor_removes_query_and_signature_raw_and_decoded() {
        let u = PageBlobUrl::parse(&format!("https://a.blob.core.windows.net/c/d?{SAS}")).unwrap();
        let r = Redactor::new(&u);
        let t = r.clean(&format!(
            "GET {} failed; sig abc+def= ; abc%2Bdef%3D",
            u.request_url("")
        ));
        assert!(!t.contains("abc"), "{t}");
    }
}
