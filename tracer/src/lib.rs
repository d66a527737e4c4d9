//! tracer: follows every TCP state transition with an eBPF probe and finds the processes
//! that leak sockets.
//!
//! The data path, one module per stage:
//! [`probe`] (kernel program, ring buffer) -> [`decode`] (typed transitions) ->
//! [`aggregate`] (the socket table) -> [`stuck`] (where stuck sockets are decided: the
//! engine both the live run and the report drive) -> [`attribute`] (owners from sock_diag
//! and /proc) -> [`output`] (text or JSON Lines), driven live by [`watch`]; [`cli`] is the
//! command line. With `--record`, [`record`] writes the
//! transitions and decisions to disk, and [`report`] rebuilds an incident from them later.
//! [`model`] holds the types every stage shares; each module imports only from stages
//! before it and from `model`.
//! [`metrics`] publishes the live run to Prometheus (`watch --metrics`).
//! [`doctor`] tells what the running kernel offers, by trying it.
//! [`completions`] and [`manpage`] describe the command line to shells and to `man`.

pub mod aggregate;
pub mod attribute;
pub mod cli;
pub mod completions;
pub mod decode;
pub mod doctor;
pub mod manpage;
pub mod metrics;
pub mod model;
pub mod output;
pub mod probe;
pub mod record;
pub mod report;
pub mod stuck;
pub mod watch;
