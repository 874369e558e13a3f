//! One study folder → predictions.
