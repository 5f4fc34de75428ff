//! An S3 object as a read-only [`Storage`] over ranged `GetObject` requests, so that the format
//! registry can open an uploaded image where it lies (`diskconv verify IMG s3://...`).
//!
//! Reads go through a small cache of 4 MiB windows (at most [`CACHE_WINDOWS`] of them), so that
//! a reader's many small reads of one region cost one request.

use std::io;
use std::sync::{Arc, Mutex};

use super::S3Url;
use super::client::S3Client;
use crate::storage::Storage;

/// Bytes fetched per request.
const WINDOW: u64 = 4 << 20;
/// Windows kept.
const CACHE_WINDOWS: usize = 16;

/// A read-only object.
pub struct S3Storage {
    client: Arc<S3Client>,
    url: S3Url,
    size: u64,
    cache: Mutex<Vec<(u64, Arc<Vec<u8>>)>>,
}

impl std::fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Storage({}, {} bytes)", self.url, self.size)
    }
}

impl S3Storage {
    /// The object `url` of `size` bytes (from `HeadObject`).
    pub fn new(client: Arc<S3Client>, url: S3Url, size: u64) -> S3Storage {
        S3Storage {
            client,
            url,
            size,
            cache: Mutex::new(Vec::new()),
        }
    }

    fn window(&self, index: u64) -> io::Result<Arc<Vec<u8>>> {
        {
            let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(pos) = c.iter().position(|(i, _)| *i == index) {
                let w = c.remove(pos);
                let data = w.1.clone();
                c.push(w);
                return Ok(data);
            }
        }
        let start = index * WINDOW;
        let len = WINDOW.min(self.size - start) as usize;
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            let n = self
                .client
                .get_range(&self.url.key, start + got as u64, &mut buf[got..])
                .map_err(|e| io::Error::other(e.chain()))?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} ends at {} bytes, {} expected",
                        self.url,
                        start + got as u64,
                        self.size
                    ),
                ));
            }
            got += n;
        }
        let data = Arc::new(buf);
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.len() >= CACHE_WINDOWS {
            c.remove(0);
        }
        c.push((index, data.clone()));
        Ok(data)
    }
}

impl Storage for S3Storage {
    fn len(&self) -> io::Result<u64> {
        Ok(self.size)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            if pos >= self.size {
                break;
            }
            let index = pos / WINDOW;
            let w = self.window(index)?;
            let at = (pos - index * WINDOW) as usize;
            let n = (w.len() - at).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&w[at..at + n]);
            done += n;
        }
        Ok(done)
    }

    fn write_all_at(&self, _buf: &[u8], offset: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is opened read-only (a write at offset {offset})",
                self.url
            ),
        ))
    }

    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is opened read-only", self.url),
        ))
    }
}
