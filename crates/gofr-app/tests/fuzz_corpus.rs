//! Replays every input under `fuzz/corpus/config/` and `fuzz/artifacts/config/` through
//! the function the fuzz target calls, so that what the fuzzer found stays fixed on stable.

use std::{fs, path::Path};

use gofr_app::fuzzing;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut count = 0;
    for dir in ["corpus", "artifacts"] {
        let Ok(entries) = fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() {
                let data = fs::read(&path).unwrap();
                let result = std::panic::catch_unwind(|| run(&data));
                assert!(result.is_ok(), "{} fails", path.display());
                count += 1;
            }
        }
    }
    // The committed corpus is not empty (a checkout without fuzz/ still passes).
    if root.join("corpus").join(target).is_dir() {
        assert!(count > 0, "empty corpus for {target}");
    }
}

#[test]
fn config_corpus() {
    replay("config", fuzzing::config);
}
