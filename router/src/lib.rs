//! The shared memory router (SMR): common memory, per-peer receive rings with credits,
//! pointer fan-out to Tstores. Built in the router issue on top of `smrdb-transport`.
