//! Black-box tests of the built binaries. One test binary, so one link step;
//! the harness (`system_tests`) builds the binaries once per run.

mod agent;
mod agent_storage;
mod arm;
mod attacks;
mod bridge;
mod broker;
mod bus;
mod cli;
mod consumers;
mod contexts;
mod docs;
mod edge;
mod fleet;
mod hub_storage;
mod interop;
mod modbus;
mod operations;
mod package;
mod pipeline;
mod secrets;
mod security;
mod state;
mod storage;
mod subscribers;
mod supervision;
mod web;
