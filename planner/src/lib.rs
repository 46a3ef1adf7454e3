//! SQL text to distributed plan. Built in the storage and join issues.
