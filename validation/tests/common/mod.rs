//! Shared by the validation integration tests.

use std::collections::BTreeMap;
use std::path::Path;

use vigie_validation::dataset::Dataset;
use vigie_validation::import::{ImportOptions, import_images};

/// Import the 17 demo pictures (from `scripts/setup.sh`) into `dir` as the
/// labelled demo dataset.
pub fn import_demo(dir: &Path) -> Dataset {
    let labels: BTreeMap<String, String> = [
        ("gl", "glioma"),
        ("me", "meningioma"),
        ("no", "notumor"),
        ("pi", "pituitary"),
    ]
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .into();
    let options = ImportOptions::new(
        regex::Regex::new("^Te-(gl|me|no|pi)_").expect("regex"),
        labels,
        "demo".into(),
    );
    import_images(&vigie_test_support::demo_images(), dir, &options).expect("import")
}
