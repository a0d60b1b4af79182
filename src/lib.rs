//! edgestream core: the Durable Streams protocol, sans-IO.
#![no_std]
extern crate alloc;
