//! The shopflow app: every service wired together in one process (embedded mode).

pub mod load;
pub mod openapi;
pub mod shop;
