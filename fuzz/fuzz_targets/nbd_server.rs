//! Fuzzes the NBD server's connection handler: the bytes after the first are what a client
//! sends (handshake flags, options, requests with their data), served over an in-memory stream
//! against a 64 KiB raw export in memory. The first byte chooses the set-up: bit 0 a writable
//! export (else read-only, with a dirty bitmap), bit 1 a server that requires TLS (the upgrade
//! only marks the stream encrypted). Any panic is a bug; a read-only export must be unchanged.
#![no_main]

use std::io::{self, Read, Write};
use std::sync::Arc;

use diskconv::formats::raw;
use diskconv::net::server::{
    Export, ScriptedStream, Server, ServerOptions, ServerStream, TlsUpgrade,
};
use diskconv::storage::{MemStorage, Storage};
use diskconv::{Format, OpenOptions};
use libfuzzer_sys::fuzz_target;

struct Marked(Box<dyn ServerStream>);

impl Read for Marked {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        self.0.read(b)
    }
}

impl Write for Marked {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl ServerStream for Marked {
    fn split(self: Box<Self>) -> io::Result<(Box<dyn Read + Send>, Box<dyn Write + Send>)> {
        self.0.split()
    }
    fn is_tls(&self) -> bool {
        true
    }
}

struct MarkTls;

impl TlsUpgrade for MarkTls {
    fn upgrade(&self, s: Box<dyn ServerStream>) -> io::Result<Box<dyn ServerStream>> {
        Ok(Box::new(Marked(s)))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&setup, client)) = data.split_first() else {
        return;
    };
    let disk: Vec<u8> = (0..64 << 10)
        .map(|i: u32| if (i / 4096) % 3 == 1 { 0 } else { (i % 251) as u8 })
        .collect();
    let storage = Arc::new(MemStorage::from_vec(disk.clone()));
    let st: Arc<dyn Storage> = storage.clone();
    let writable = setup & 1 != 0;
    let export = if writable {
        let Ok(u) = raw::open_storage(st) else {
            return;
        };
        Export::writable("w", Box::new(u))
    } else {
        let Ok(r) = diskconv::open_storage(st, &OpenOptions::new().format(Format::Raw)) else {
            return;
        };
        let Ok(e) =
            Export::read_only("", Arc::from(r)).with_dirty_bitmap("b0", vec![100..5000, 9000..70000])
        else {
            return;
        };
        e
    };
    let options = ServerOptions {
        tls: (setup & 2 != 0).then(|| Arc::new(MarkTls) as Arc<dyn TlsUpgrade>),
        max_in_flight: 4,
        workers: 2,
    };
    let Ok(server) = Server::new(vec![export], options) else {
        return;
    };
    let stream = ScriptedStream::new(client.to_vec());
    let _ = server.handle(Box::new(stream), "fuzz");
    if !writable {
        assert!(storage.to_vec() == disk, "a read-only export was changed");
    }
});
