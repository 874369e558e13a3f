//! TEMP stub (replaced by the geom branch).
pub fn direction_from_iop(_iop: &[f64; 6]) -> [[f64; 3]; 3] {
    unimplemented!()
}
