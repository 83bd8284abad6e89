//! The shipped validation index lists match the code that made them.

use agm_data::loaders::splits::{self, parse_list, render_list, validation_positions, VALIDATION_SEED};
use agm_data::loaders::{avmnist, cremad};

#[test]
fn shipped_validation_lists_are_reproducible() {
    for (shipped, n) in
        [(splits::AVMNIST_VALIDATION, avmnist::REAL_TRAIN_ROWS), (splits::CREMAD_VALIDATION, cremad::REAL_TRAIN_ROWS)]
    {
        let list = parse_list(shipped);
        assert_eq!(list.len(), n / 10);
        assert_eq!(list, validation_positions(n, VALIDATION_SEED), "regenerate with --ignored write_validation_lists");
    }
}

#[test]
#[ignore = "rewrites src/loaders/splits/*.txt"]
fn write_validation_lists() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/loaders/splits");
    for (file, what, n) in [
        ("avmnist_validation.txt", "AV-MNIST", avmnist::REAL_TRAIN_ROWS),
        ("cremad_validation.txt", "CREMA-D", cremad::REAL_TRAIN_ROWS),
    ] {
        std::fs::write(dir.join(file), render_list(what, n, &validation_positions(n, VALIDATION_SEED))).unwrap();
    }
}
