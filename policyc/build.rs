//! Build metadata for `--version`: the git revision and a reproducible build
//! date (see build-support/version.rs, shared with the other binary crate).

include!("../build-support/version.rs");

fn main() {
    emit_version_env();
}
