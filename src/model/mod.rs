//! The Prima network in libtorch.
