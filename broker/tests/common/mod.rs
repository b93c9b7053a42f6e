//! Shared harness of the broker's integration tests (`mod common;` in each test file).
#![allow(dead_code)]

pub mod cells;
pub mod etcd;
