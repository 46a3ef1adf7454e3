//! The smrdb node process: controllers, catalog, Postgres front end. Built in the
//! storage issue.
