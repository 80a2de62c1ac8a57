pub mod cloud;
pub mod config;
