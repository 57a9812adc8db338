//! Reading the embedded output tables back (for `meterflow trace`, the demo and tests).

use std::collections::BTreeMap;
use std::path::Path;

/// One row, by column name.
pub type Row = BTreeMap<String, String>;

/// Every row of every part file of `table` under `out`.
pub fn read_table(out: &Path, table: &str) -> std::io::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let dir = out.join(table);
    let mut parts: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    parts.sort();
    for part in parts {
        let text = std::fs::read_to_string(&part)?;
        let mut records = parse_csv(&text).into_iter();
        let Some(header) = records.next() else {
            continue;
        };
        for r in records {
            rows.push(header.iter().cloned().zip(r).collect());
        }
    }
    Ok(rows)
}

/// A run's input paths (`sources.csv`), by the index the tables' `source` column holds.
pub fn input_paths(out: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(out.join("sources.csv")).unwrap_or_default();
    parse_csv(&text)
        .into_iter()
        .skip(1)
        .filter_map(|r| Some((r.first()?.clone(), r.get(1)?.clone())))
        .collect()
}

/// RFC 4180 CSV: quoted fields may hold commas, quotes (doubled) and newlines.
pub fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        any = true;
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            ',' => record.push(std::mem::take(&mut field)),
            '\n' => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
                any = false;
            }
            '\r' => {}
            _ => field.push(c),
        }
    }
    if any {
        record.push(field);
        records.push(record);
    }
    records
}

/// Rows of a signed table summed by their content (without `sign` and `version`): the current rows.
pub fn current_rows(rows: &[Row]) -> Vec<Row> {
    let mut net: BTreeMap<Row, i64> = BTreeMap::new();
    for r in rows {
        let sign: i64 = r
            .get("sign")
            .map_or("", |s| s.as_str())
            .parse()
            .unwrap_or(0);
        let mut key = r.clone();
        key.remove("sign");
        key.remove("version");
        *net.entry(key).or_insert(0) += sign;
    }
    net.into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, _)| r)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quotes_commas_and_newlines() {
        let rows = parse_csv("a,b,c\n1,\"x,y\",\"say \"\"hi\"\"\nthere\"\n");
        assert_eq!(
            rows,
            vec![vec!["a", "b", "c"], vec!["1", "x,y", "say \"hi\"\nthere"]]
        );
    }
}
