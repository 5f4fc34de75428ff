//! The Network Block Device protocol: the wire format shared by the server (`diskconv serve`)
//! and the client (`nbd://`, `nbds://` and `nbd+unix://` URIs wherever an image is named), and
//! the transport under it: sockets (TCP, Unix) and TLS.
//!
//! The client side: [`NbdUri`] parses the URIs, [`client::NbdClient`] negotiates and keeps
//! many requests in flight on one connection (reconnecting when it drops), and
//! [`NbdStorage`] presents an export as a [`Storage`](crate::storage::Storage), so every
//! reader and the raw target work over it.

pub mod client;
pub mod proto;
mod reader;
pub mod server;
mod sink;
mod storage;
pub mod tls;
pub mod transport;
pub mod uri;

pub use client::{ExportInfo, NbdClient, NbdOptions};
pub use reader::NbdReader;
pub use sink::NbdSink;
pub use storage::NbdStorage;
pub use uri::{NbdAddress, NbdUri, is_nbd_path, is_nbd_uri};
