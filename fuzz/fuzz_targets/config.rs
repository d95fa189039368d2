//! The configuration file (`matter_est::config::Config::parse`): an operator's, not a
//! stranger's, but read at every start and reload, so a typo must be an error naming the key,
//! never a panic or a hang. Parsing reads no file (paths in it are only resolved).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = matter_est::config::Config::parse(std::path::Path::new("/fuzz/matter-est.toml"), text);
});
