//! TEMP stub (replaced by the geom branch).
use super::Volume;
pub fn resample_inplane_256(_v: &Volume) -> Volume {
    unimplemented!()
}
