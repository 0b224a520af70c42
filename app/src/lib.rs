//! The shopflow app: every service wired together in one process (embedded mode).
#![recursion_limit = "256"]

pub mod anybus;
pub mod load;
pub mod migrate;
pub mod openapi;
pub mod ops;
pub mod shop;
pub mod verify;
