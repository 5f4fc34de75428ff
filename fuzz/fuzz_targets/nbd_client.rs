//! Fuzzes the NBD client's reply side: the input is what a hostile server sends. The first
//! byte chooses the scene: the negotiation (greeting, option replies, `NBD_OPT_GO` info) over
//! an in-memory stream, or the transmission demultiplexer with a few requests in flight (reads
//! of several sizes, a block-status query) fed the rest as the reply stream. Any panic or
//! out-of-bounds write is a bug; errors are fine.
#![no_main]

use std::io::{self, Read, Write};

use diskconv::net::client::{Demux, handshake_finish, handshake_start};
use diskconv::net::proto::{Request, cmd};
use libfuzzer_sys::fuzz_target;

/// Reads the input, swallows what the client writes.
struct Wire<'a>(&'a [u8]);

impl Read for Wire<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Wire<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&scene, rest)) = data.split_first() else {
        return;
    };
    if scene & 1 == 0 {
        let mut w = Wire(rest);
        if let Ok(flags) = handshake_start(&mut w) {
            let bitmap = (scene & 2 != 0).then_some("b0");
            let _ = handshake_finish(&mut w, flags, "export", bitmap);
        }
        return;
    }
    let structured = scene & 2 == 0;
    let d = Demux::new(1 << 20, structured, vec![1, 2], 16);
    let mut tickets = Vec::new();
    for (command, offset, length) in [
        (cmd::READ, 0u64, 4096u32),
        (cmd::READ, 4096, 512),
        (cmd::READ, (1 << 20) - 65536, 65536),
        (cmd::BLOCK_STATUS, 0, 1 << 20),
        (cmd::WRITE, 8192, 4096),
    ] {
        let req = Request {
            flags: 0,
            command,
            cookie: 0,
            offset,
            length,
        };
        if let Ok((r, t)) = d.register(req) {
            tickets.push((r, t));
        }
    }
    let _ = d.run(&mut &rest[..]);
    for (r, t) in tickets {
        if let Ok(done) = t.wait() {
            if r.command == cmd::READ {
                assert_eq!(done.data.len(), r.length as usize);
            }
        }
    }
});
