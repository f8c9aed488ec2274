//! Plain-text tables for people: one header row, columns padded to their widest cell,
//! two spaces between columns, no trailing blanks (so `grep`/`awk` pipelines and diffs
//! stay clean). Numeric columns can be right-aligned so that digits line up.

/// How a column's cells sit inside its width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table built row by row and rendered once at the end, since column widths depend on
/// every row.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    aligns: Vec<Align>,
    rows: Vec<Vec<String>>,
}

/// Space between two columns.
const GAP: &str = "  ";

impl Table {
    /// A table with these column headers, every column left-aligned.
    pub fn new(headers: &[&'static str]) -> Self {
        Table {
            headers: headers.to_vec(),
            aligns: vec![Align::Left; headers.len()],
            rows: Vec::new(),
        }
    }

    /// Right-aligns the named columns (numbers, ratios). Unknown names are a programming
    /// error, caught by the tests of each listing.
    pub fn right(mut self, columns: &[&str]) -> Self {
        for c in columns {
            let i = self
                .headers
                .iter()
                .position(|h| h == c)
                .unwrap_or_else(|| panic!("no column named {c}"));
            self.aligns[i] = Align::Right;
        }
        self
    }

    /// Appends one row. Missing cells render empty; extra cells are a programming error.
    pub fn row(&mut self, cells: Vec<String>) {
        assert!(
            cells.len() <= self.headers.len(),
            "row has {} cells for {} columns",
            cells.len(),
            self.headers.len()
        );
        self.rows.push(cells);
    }

    /// The table as text, one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        // Width in characters, not bytes: hostnames and task names may be UTF-8.
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(width(cell));
            }
        }

        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                if i > 0 {
                    line.push_str(GAP);
                }
                let pad = w - width(cell);
                match self.aligns[i] {
                    Align::Left => {
                        line.push_str(cell);
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let mut t = Table::new(&["ID", "STATE", "CPUS"]).right(&["CPUS"]);
        t.row(vec!["a".into(), "RUNNING".into(), "0.5/4".into()]);
        t.row(vec!["agent-long".into(), "GONE".into(), "12/16".into()]);
        assert_eq!(
            t.render(),
            "ID          STATE     CPUS\n\
             a           RUNNING  0.5/4\n\
             agent-long  GONE     12/16\n"
        );
    }

    #[test]
    fn no_trailing_blanks_and_short_rows() {
        let mut t = Table::new(&["NAME", "NOTE"]);
        t.row(vec!["x".into()]);
        t.row(vec!["y".into(), "".into()]);
        let text = t.render();
        assert_eq!(text, "NAME  NOTE\nx\ny\n");
        assert!(text.lines().all(|l| !l.ends_with(' ')));
    }

    #[test]
    fn width_counts_characters_not_bytes() {
        let mut t = Table::new(&["HOST", "N"]);
        t.row(vec!["hôte".into(), "1".into()]);
        t.row(vec!["ab".into(), "2".into()]);
        assert_eq!(t.render(), "HOST  N\nhôte  1\nab    2\n");
    }

    #[test]
    fn header_only_when_empty() {
        let t = Table::new(&["A", "B"]);
        assert_eq!(t.render(), "A  B\n");
    }
}
