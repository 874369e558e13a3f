//! Volumes as ITK sees them (size and geometry in (x, y, z)) and plain arrays in
//! SimpleITK's (z, y, x) order.
use super::PixelType;

/// Physical geometry of an ITK image. `direction[i][j]` is component `i` of the
/// direction of image axis `j` (the matrix has columns r, c, s;
/// docs/prima-inference-spec.md §1.7).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometry {
    pub origin: [f64; 3],
    pub direction: [[f64; 3]; 3],
    /// (x, y, z)
    pub spacing: [f64; 3],
}

/// An ITK image: voxel values of pixel type `pixel_type` held as f64 (exact for every
/// type the pipeline produces), stored z-major: `data[(z * ny + y) * nx + x]`.
#[derive(Debug, Clone)]
pub struct Volume {
    /// (x, y, z) = (columns, rows, slices)
    pub size: [usize; 3],
    pub data: Vec<f64>,
    pub pixel_type: PixelType,
    pub geometry: Geometry,
}

impl Volume {
    #[inline]
    pub fn at(&self, x: usize, y: usize, z: usize) -> f64 {
        self.data[(z * self.size[1] + y) * self.size[0] + x]
    }
}

/// A dense array in (z, y, x) order (what `sitk.GetArrayFromImage` returns).
#[derive(Debug, Clone, PartialEq)]
pub struct Array3<T> {
    /// (z, y, x)
    pub shape: [usize; 3],
    pub data: Vec<T>,
}

impl<T: Copy> Array3<T> {
    #[inline]
    pub fn at(&self, z: usize, y: usize, x: usize) -> T {
        self.data[(z * self.shape[1] + y) * self.shape[2] + x]
    }
}
