//! The BurstGpt importer on a file holding the fuzz bytes (strict and --skip-bad): errors are
//! fine, panics are not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use retrace_traces::import::{import_file, Format, ImportOptions};

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("retrace-fuzz-burstgpt-{}.trace", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    for skip_bad in [false, true] {
        let opts = ImportOptions {
            format: Some(Format::BurstGpt),
            skip_bad,
            base_time_us: None,
        };
        let _ = import_file(&path, &opts);
    }
    // Format detection reads the same file.
    let _ = retrace_traces::import::detect(&path);
});
