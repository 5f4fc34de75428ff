//! NBD (Network Block Device): the transport under the protocol: sockets (TCP, Unix) and TLS.

pub mod tls;
pub mod transport;
