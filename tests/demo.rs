//! `eiplab demo` in-process: every check of the tour holds (the same run CI makes as nobody
//! through scripts/unprivileged.sh). No root.

#[test]
fn the_demo_tour_holds_every_check() {
    let mut out = Vec::new();
    let ok = eiplab::demo::run(&mut out).expect("the demo runs");
    let text = String::from_utf8_lossy(&out);
    assert!(ok, "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    // Each mode was visited and narrated with evidence.
    for step in [
        "NAT mode",
        "Mode=BINDED",
        "Mode=MULTI_BINDED",
        "UnassociateEipAddress",
    ] {
        assert!(text.contains(step), "{step}: {text}");
    }
}
