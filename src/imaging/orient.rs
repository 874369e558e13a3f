//! TEMP stub (replaced by the geom branch).
use super::{Array3, Volume};
pub fn orient_lps(_v: &Volume) -> (Array3<f64>, String) {
    unimplemented!()
}
