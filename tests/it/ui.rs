//! The derives' error messages, pinned by trybuild. Each `.stderr` was read
//! and reviewed; refresh with `TRYBUILD=overwrite` and review the diff.
//! Pinned for the test command's `--all-features`: where rustc lists the
//! types that implement a trait, the list depends on the features (the
//! knowledge base's `DocumentEvent` and `KnowledgeEvent`; with `personal`,
//! `PersonalDocumentEvent`, and `SubjectForgotten`, which rustc names by
//! its `annals::knowledge` path).

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
