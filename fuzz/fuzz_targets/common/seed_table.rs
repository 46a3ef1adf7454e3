//! Table `t` of the seeds (`examples/gen_corpus.rs`), which the `fragment` target's
//! expressions are decoded over: a column of every SQL type.

use smrdb_tstore::{ColumnDef, SqlType, TableSchema};

/// `t`'s columns: `id BIGINT NOT NULL, a INTEGER, sm SMALLINT, r REAL, x DOUBLE
/// PRECISION, n NUMERIC(10,2), c CHAR(3), vc VARCHAR(8), s TEXT, d DATE, ts TIMESTAMP,
/// f BOOLEAN`.
pub fn seed_table() -> TableSchema {
    let col = |name: &str, ty, nullable| ColumnDef::new(name, ty, nullable);
    TableSchema::new(vec![
        col("id", SqlType::BigInt, false),
        col("a", SqlType::Integer, true),
        col("sm", SqlType::SmallInt, true),
        col("r", SqlType::Real, true),
        col("x", SqlType::Double, true),
        col(
            "n",
            SqlType::Numeric {
                precision: 10,
                scale: 2,
            },
            true,
        ),
        col("c", SqlType::Char(3), true),
        col("vc", SqlType::Varchar(Some(8)), true),
        col("s", SqlType::Text, true),
        col("d", SqlType::Date, true),
        col("ts", SqlType::Timestamp, true),
        col("f", SqlType::Boolean, true),
    ])
}
