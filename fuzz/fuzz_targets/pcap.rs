//! The capture-file reader: any bytes are refused up front or read to an
//! end or a named stopping point; never a panic or an endless loop.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpcopy::offline::{CaptureFile, Next};

fuzz_target!(|data: &[u8]| {
    let reader = Box::new(std::io::Cursor::new(data.to_vec()));
    let Ok(mut f) = CaptureFile::from_reader("fuzz", data.len() as u64, reader) else {
        return;
    };
    for _ in 0..100_000 {
        match f.next_record() {
            Next::Packet { ip, .. } => assert!(!ip.is_empty()),
            Next::Skipped => {}
            Next::End => return,
            Next::Stopped { offset, .. } => {
                assert!(offset <= data.len() as u64);
                return;
            }
        }
    }
    panic!("no end after 100000 records of a {}-byte file", data.len());
});
