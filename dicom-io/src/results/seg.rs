//! Segmentation (to come).
