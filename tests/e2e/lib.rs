//! Nothing to link: this package only holds the cross-binary end-to-end
//! tests in `e2e/main.rs`, which run the real `policyc` and `proxyd`.
