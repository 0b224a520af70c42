#![doc = include_str!("../README.md")]

mod bus;
mod client;
mod config;
mod consumer;
mod error;
mod reader;

pub use bus::KafkaBus;
pub use config::KafkaConfig;
pub use consumer::KafkaConsumer;
