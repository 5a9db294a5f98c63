#![no_std]
// The program lives in main.rs; this empty library target lets the agent
// declare a build-dependency on this crate so cargo rebuilds it on changes.
