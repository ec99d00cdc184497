//! One module per subcommand.

pub mod bench;
pub mod demo;
pub mod health;
pub mod migrate;
pub mod queue;
pub mod receive;
pub mod send;
pub mod worker;
