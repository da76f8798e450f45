#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| qtask_fuzz::urls(data));
