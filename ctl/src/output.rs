//! Output formats: a human table, or the same data as JSON or YAML for scripts.

use serde::Serialize;

use crate::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// Prints `value` as JSON or YAML; `None` for a table (the caller prints it).
pub fn structured<T: Serialize>(format: Format, value: &T) -> Result<Option<String>, Error> {
    match format {
        Format::Table => Ok(None),
        Format::Json => serde_json::to_string_pretty(value)
            .map(Some)
            .map_err(|e| Error::Encode(e.to_string())),
        Format::Yaml => serde_yaml::to_string(value)
            .map(Some)
            .map_err(|e| Error::Encode(e.to_string())),
    }
}

/// Left-aligned columns, two spaces apart, under upper-case headers.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_align_to_the_widest_cell() {
        let t = super::table(
            &["A", "B"],
            &[
                vec!["long-cell".into(), "x".into()],
                vec!["s".into(), "y".into()],
            ],
        );
        assert_eq!(t, "A          B\nlong-cell  x\ns          y\n");
    }
}
