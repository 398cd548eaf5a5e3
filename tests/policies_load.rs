//! Every shipped policy file loads and compiles.

use tierlimit::Config;

#[test]
fn the_shipped_policies_load() {
    for name in ["qlik", "qarion", "dataapi", "gather", "qstash", "guarded"] {
        let path = format!(
            "{}/examples/policies/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let config = Config::from_file(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        config.build().unwrap_or_else(|e| panic!("{path}: {e}"));
    }
}
