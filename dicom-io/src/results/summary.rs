//! Summary image (to come).
