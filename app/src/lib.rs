//! The shopflow app: the shop's services, wired together in one process or one per service.
#![recursion_limit = "256"]

pub mod alone;
pub mod cdc;
pub mod dashboard;
pub mod gateway;
pub mod load;
pub mod migrate;
pub mod openapi;
pub mod ops;
pub mod security;
pub mod services;
pub mod shop;
pub mod tail;
pub mod verify;
