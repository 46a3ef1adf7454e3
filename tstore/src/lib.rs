//! One Tstore: columnar slices of tables and the operators that run on them. Built in
//! the storage issue.
