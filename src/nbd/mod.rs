//! The Network Block Device protocol: the wire format shared by the server (`diskconv serve`)
//! and the client (`nbd://`, `nbds://` and `nbd+unix://` URIs wherever an image is named), and
//! the transport under it: sockets (TCP, Unix) and TLS.

pub mod proto;
pub mod server;
pub mod tls;
pub mod transport;
