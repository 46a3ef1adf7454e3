//! Statement text from a client is untrusted: the planner answers anything with a plan
//! or an error, never a panic (the node would turn one into XX000, but it is a bug).

use smrdb_planner::{plan_sql, Catalog, TableSchema};

struct NoTables;
impl Catalog for NoTables {
    fn table(&self, _: &str) -> Option<TableSchema> {
        None
    }
}

#[test]
fn multibyte_characters_near_the_start_of_an_unparsable_statement() {
    // Expect: an error. Found by the `sql` fuzz target: a statement that does not
    // parse is checked for a leading `COPY`, and slicing its first 4 bytes as a str
    // panicked when byte 4 fell inside a multi-byte character.
    let found = "SET\u{06cc}mrdb.overl =fTRUEo paf\n";
    assert!(plan_sql(found, &NoTables).is_err());
    for ch in ['\u{e9}', '\u{06cc}', '\u{20ac}', '\u{1f600}'] {
        for at in 0..6 {
            let mut s: String = "COPYX (".chars().take(at).collect();
            s.push(ch);
            s.push_str(" x FROM STDIN ((");
            assert!(plan_sql(&s, &NoTables).is_err(), "{s:?}");
        }
    }
}
