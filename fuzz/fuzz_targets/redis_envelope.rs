#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| qtask_fuzz::redis_envelope(data));
