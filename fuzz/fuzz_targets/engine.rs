#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| eiplab_fuzz::engine::run(data));
