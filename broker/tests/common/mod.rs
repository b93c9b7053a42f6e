//! Shared harness of the broker's integration tests (`mod common;` in each test file).
#![allow(dead_code)]

pub mod broker;
pub mod cells;
pub mod etcd;
pub mod osb;
pub mod s3;
