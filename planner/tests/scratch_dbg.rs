#![allow(missing_docs)]
mod common;
use common::*;
use smrdb_planner::Planner;
use smrdb_tstore::{ColumnDef, SqlType, TableSchema};
#[test]
fn dbg() {
    let mut db = Db::new();
    db.add_table(
        "sq_dept",
        TableSchema::new(vec![
            ColumnDef::new("id", SqlType::Integer, true),
            ColumnDef::new("dname", SqlType::Text, true),
        ]),
        vec![],
    );
    db.add_table(
        "sq_emp",
        TableSchema::new(vec![
            ColumnDef::new("id", SqlType::Integer, true),
            ColumnDef::new("dept", SqlType::Integer, true),
        ]),
        vec![],
    );
    let p = Planner::new().unwrap();
    for sql in [
        "SELECT id, (SELECT id FROM sq_dept) FROM sq_emp",
        "SELECT id, (SELECT max(id) FROM sq_dept) FROM sq_emp",
    ] {
        let stmt = smrdb_planner::frontend::Frontend::parse(sql)
            .unwrap()
            .remove(0);
        let b = p.frontend().bind(stmt, &db);
        match &b {
            Ok(b) => println!("{}", b.display_indent_schema()),
            Err(e) => println!("ERR {e:?}"),
        }
        if let Ok(b) = b {
            match p.frontend().optimize(&b) {
                Ok(o) => println!("{}", o.display_indent_schema()),
                Err(e) => println!("OPT ERR {e:?}"),
            }
        }
    }
}
