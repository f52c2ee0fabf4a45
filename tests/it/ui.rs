//! The derives' error messages, pinned by trybuild. Each `.stderr` was read
//! and reviewed; refresh with `TRYBUILD=overwrite` and review the diff.

#[test]
fn event_derive_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/event/*.rs");
}

#[test]
fn aggregate_derive_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/aggregate/*.rs");
}

#[test]
fn saga_derive_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/saga/*.rs");
}
