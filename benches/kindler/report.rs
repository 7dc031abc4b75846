//! The table every measurement writes its figures to: each figure with its target and
//! verdict, printed as markdown (BENCHMARKS.md quotes it).

/// Nearest-rank percentile of sorted values.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

#[derive(Clone, Copy)]
pub enum Goal {
    Below(f64),
    AtLeast(f64),
    /// A figure beside the judged ones (p50 next to a judged p99): no target.
    Info,
    /// A figure the issue sets no target for: "shown" in the target column, not judged.
    Shown,
}

struct Row {
    id: String,
    what: String,
    value: String,
    target: String,
    verdict: &'static str,
    note: String,
}

#[derive(Default)]
pub struct Table {
    rows: Vec<Row>,
    pub missed: usize,
    pub errors: usize,
}

impl Table {
    pub fn figure(&mut self, id: &str, what: &str, value: f64, unit: &str, goal: Goal) {
        self.figure_note(id, what, value, unit, goal, "");
    }

    pub fn figure_note(
        &mut self,
        id: &str,
        what: &str,
        value: f64,
        unit: &str,
        goal: Goal,
        note: &str,
    ) {
        // Counts ("2 of 14 runs") are whole numbers.
        let show = |v: f64| {
            if unit.starts_with("of ") {
                format!("{v:.0}")
            } else {
                show(v)
            }
        };
        let (target, verdict) = match goal {
            Goal::Below(limit) => (
                format!("< {} {unit}", show(limit)),
                if value < limit { "ok" } else { "MISSED" },
            ),
            Goal::AtLeast(floor) => (
                format!("≥ {} {unit}", show(floor)),
                if value >= floor { "ok" } else { "MISSED" },
            ),
            Goal::Info => (String::new(), ""),
            Goal::Shown => ("shown".to_owned(), ""),
        };
        if verdict == "MISSED" {
            self.missed += 1;
        }
        self.rows.push(Row {
            id: id.into(),
            what: what.into(),
            value: format!("{} {unit}", show(value)),
            target,
            verdict,
            note: note.into(),
        });
    }

    pub fn error(&mut self, id: &str, what: &str, message: &str) {
        self.errors += 1;
        self.rows.push(Row {
            id: id.into(),
            what: what.into(),
            value: "—".into(),
            target: String::new(),
            verdict: "ERROR",
            note: message
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect(),
        });
    }

    /// A markdown table (readable as plain text too).
    pub fn render(&self, quick: bool) -> String {
        let head = [
            "#",
            "measurement",
            "result",
            "target",
            if quick { "verdict (quick)" } else { "verdict" },
            "notes",
        ];
        let cells: Vec<[String; 6]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.id.clone(),
                    r.what.clone(),
                    r.value.clone(),
                    r.target.clone(),
                    r.verdict.to_owned(),
                    r.note.clone(),
                ]
            })
            .collect();
        let mut width = head.map(|h| h.chars().count());
        for row in &cells {
            for (w, c) in width.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cols: [&str; 6]| {
            let mut s = String::from("|");
            for (i, c) in cols.iter().enumerate() {
                let pad = width[i] - c.chars().count();
                if i == 2 {
                    s.push_str(&format!(" {}{c} |", " ".repeat(pad)));
                } else {
                    s.push_str(&format!(" {c}{} |", " ".repeat(pad)));
                }
            }
            s
        };
        let mut out = vec![line(head)];
        let rule: Vec<String> = width
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i == 2 {
                    format!("{}:", "-".repeat(*w + 1))
                } else {
                    "-".repeat(w + 2)
                }
            })
            .collect();
        out.push(format!("|{}|", rule.join("|")));
        for row in &cells {
            out.push(line([&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]]));
        }
        out.join("\n")
    }
}

/// A figure with sensible precision: 0.123, 1.23, 12.3, 1,234.
pub fn show(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let a = v.abs();
    if a >= 1000.0 {
        let whole = v.round() as i64;
        let digits = whole.abs().to_string();
        let mut grouped = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(ch);
        }
        if whole < 0 {
            grouped.insert(0, '-');
        }
        grouped
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}
