//! Free-space floor: C-STORE answered A700, nothing half-written left behind.

mod common;
mod fixtures;

use common::*;

#[test]
fn below_free_space_floor_answers_a700() {
    let Some(fx) = fixtures::reference_dir() else {
        return;
    };
    if !have_dcmtk() {
        return;
    }
    let o = NodeOpts {
        // Far more than any test machine has free.
        min_free_mb: 1 << 40,
        ..NodeOpts::default()
    };
    let mut node = Node::start(o);
    let series = study_series(&fx, "STUDY_A");
    let out = storescu(node.opts.port, SCU_AE, &series[0][..3]);
    let t = text(&out);
    assert!(
        t.contains("Refused: OutOfResources"),
        "storescu did not see A700:\n{t}"
    );
    assert!(!t.contains("Received Store Response (Success)"), "{t}");
    assert!(node.spool_objects().is_empty(), "nothing stored");
    assert!(node.spool_tmp().is_empty(), "no half-written files");
    assert!(node.log_text().contains("A700"), "{}", node.log_text());
    // Still serving.
    assert!(echoscu(node.opts.port, SCU_AE, NODE_AE).status.success());
    assert!(node.is_running());
}
