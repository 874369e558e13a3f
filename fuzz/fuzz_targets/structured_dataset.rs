#![no_main]

libfuzzer_sys::fuzz_target!(init: prima_node_fuzz::install_panic_hook(), |data: &[u8]| {
    prima_node_fuzz::run(prima_node_fuzz::fuzzing::structured_dataset, data);
});
