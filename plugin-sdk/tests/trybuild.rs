//! The macros' compile-time behaviour: correct plugins of each kind compile (`ui/pass`), and each
//! mistake gets one spanned error at the mistake with no other warning or error (`ui/fail/*.stderr`
//! hold the exact compiler output; regenerate with `TRYBUILD=overwrite` and read the diff).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
