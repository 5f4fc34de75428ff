//! Fuzzes the text parsers of an OVA: the OVF descriptor (XML, with the pre-scan that bounds
//! hostile documents) and the `.mf` manifest. Any panic, hang or huge allocation is a bug;
//! errors are fine.
#![no_main]

use diskconv::formats::ova::manifest::OvaManifest;
use diskconv::formats::ova::ovf::parse_ovf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = parse_ovf(data, "fuzz.ovf") {
        for d in &env.disks {
            let _ = env.file_of(d);
        }
    }
    if let Ok(m) = OvaManifest::parse(data, "fuzz.mf") {
        for e in &m.entries {
            assert_eq!(e.digest.len(), e.algorithm.digest_len());
        }
        let _ = m.algorithms();
    }
});
