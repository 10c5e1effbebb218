//! Functional checks of the benchmark programs (never their speed): the servers answer, the
//! load generator verifies what comes back and counts what is wrong.

mod loadgen;
mod support;
