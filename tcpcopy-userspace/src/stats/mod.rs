//! The stats room: every figure a program reports is declared once, as a
//! [`Figure`] that says what it is called as a metric (and its help), where
//! it goes in the periodic statistics line and in the exit summary, and,
//! for a loss, the words that say where segments went. The statistics
//! line, the summary, the losses table and the Prometheus exposition are
//! all generated from a program's [`Report`], for tcpcopy and intercept
//! alike; adding a figure is adding one declaration.

use crate::metrics::Exposition;

/// The groups of the statistics line, in the order they are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    /// Counters of the eBPF program, titled "kernel".
    Kernel,
    /// What was captured and replayed (tcpcopy), or records (intercept).
    Traffic,
    Sessions,
    /// What went to the target (tcpcopy), or peers (intercept).
    Sent,
    /// The control channel.
    Control,
}

impl Section {
    fn title(self) -> Option<&'static str> {
        match self {
            Section::Kernel => Some("kernel"),
            Section::Sessions => Some("sessions"),
            _ => None,
        }
    }
}

/// How a figure is exposed to Prometheus.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Metric {
    /// Not a metric (a figure derived for the line or the summary).
    None,
    Counter(&'static str),
    Gauge(&'static str),
    /// One series of a counter family: (family, label name, label value).
    Series(&'static str, &'static str, String),
}

/// One reported figure and where it appears.
#[derive(Clone, Debug)]
pub struct Figure {
    metric: Metric,
    help: &'static str,
    line: Option<(Section, &'static str)>,
    summary: Option<String>,
    loss: Option<Loss>,
    value: u64,
}

/// A way segments are lost: its metric label and its words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loss {
    pub label: &'static str,
    pub words: &'static str,
}

impl Figure {
    /// A counter of its own (exposed with the `_total` suffix).
    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Figure {
        Figure::new(Metric::Counter(name), help, value)
    }
    /// A gauge of its own.
    pub fn gauge(name: &'static str, help: &'static str, value: u64) -> Figure {
        Figure::new(Metric::Gauge(name), help, value)
    }
    /// One series of a counter family `family{label="value"}`; the
    /// family's help is the first series'.
    pub fn series(
        family: &'static str,
        label: &'static str,
        value_label: impl Into<String>,
        help: &'static str,
        value: u64,
    ) -> Figure {
        Figure::new(
            Metric::Series(family, label, value_label.into()),
            help,
            value,
        )
    }
    /// A figure only the line or the summary shows.
    pub fn derived(value: u64) -> Figure {
        Figure::new(Metric::None, "", value)
    }
    fn new(metric: Metric, help: &'static str, value: u64) -> Figure {
        Figure {
            metric,
            help,
            line: None,
            summary: None,
            loss: None,
            value,
        }
    }
    /// Shown as `key:value` in `section` of the statistics line.
    pub fn line(mut self, section: Section, key: &'static str) -> Figure {
        self.line = Some((section, key));
        self
    }
    /// Listed under `name` in the exit summary when not zero.
    pub fn summary(mut self, name: impl Into<String>) -> Figure {
        self.summary = Some(name.into());
        self
    }
    /// Segments lost this way; `label` in `*_lost_segments`, `words` in
    /// the summary's "where it went".
    pub fn loss(mut self, label: &'static str, words: &'static str) -> Figure {
        self.loss = Some(Loss { label, words });
        self
    }
}

/// A program's figures at one moment, in declaration order.
#[derive(Clone, Debug, Default)]
pub struct Report {
    figures: Vec<Figure>,
}

impl Report {
    pub fn push(&mut self, f: Figure) {
        self.figures.push(f);
    }
    pub fn extend(&mut self, fs: impl IntoIterator<Item = Figure>) {
        self.figures.extend(fs);
    }

    /// The statistics line: `key:value` by section, sections apart by `|`.
    pub fn line(&self) -> String {
        let mut sections: Vec<(Section, Vec<String>)> = Vec::new();
        for f in &self.figures {
            let Some((section, key)) = f.line else {
                continue;
            };
            let item = format!("{key}:{}", f.value);
            match sections.iter_mut().find(|(s, _)| *s == section) {
                Some((_, items)) => items.push(item),
                None => sections.push((section, vec![item])),
            }
        }
        sections.sort_by_key(|(s, _)| *s);
        sections
            .into_iter()
            .map(|(s, items)| match s.title() {
                Some(t) => format!("{t} {}", items.join(" ")),
                None => items.join(" "),
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// The summary's list: every figure with a summary name that is not 0.
    pub fn summary_lines(&self) -> String {
        let mut out = String::new();
        for f in &self.figures {
            if let (Some(name), v) = (&f.summary, f.value) {
                if v != 0 {
                    out.push_str(&format!("  {name:<31} {v:>12}\n"));
                }
            }
        }
        out
    }

    /// Every way segments can be lost, with how many were.
    pub fn losses(&self) -> Vec<(Loss, u64)> {
        self.figures
            .iter()
            .filter_map(|f| f.loss.map(|l| (l, f.value)))
            .collect()
    }

    /// The losses in words, largest first: "N words, M words" (None: none
    /// lost), and their total.
    pub fn losses_in_words(&self) -> (u64, Option<String>) {
        let mut lost: Vec<(Loss, u64)> =
            self.losses().into_iter().filter(|(_, n)| *n > 0).collect();
        lost.sort_by_key(|l| std::cmp::Reverse(l.1));
        let total = lost.iter().map(|(_, n)| n).sum();
        let words = (!lost.is_empty()).then(|| {
            lost.iter()
                .map(|(l, n)| format!("{n} {}", l.words))
                .collect::<Vec<_>>()
                .join(", ")
        });
        (total, words)
    }

    /// The Prometheus exposition: each counter and gauge, and each family
    /// with its series, in declaration order (`lost_family` collects the
    /// losses as one more family, labelled `reason`).
    pub fn exposition(&self, lost_family: Option<(&'static str, &'static str)>) -> Exposition {
        let mut x = Exposition::default();
        let mut done: Vec<&str> = Vec::new();
        for f in &self.figures {
            match &f.metric {
                Metric::None => {}
                Metric::Counter(name) => x.counter(name, f.help, f.value),
                Metric::Gauge(name) => x.gauge(name, f.help, f.value as i64),
                Metric::Series(family, label, _) => {
                    if done.contains(family) {
                        continue;
                    }
                    done.push(family);
                    let series = self.figures.iter().filter_map(|g| match &g.metric {
                        Metric::Series(fam, _, v) if fam == family => Some((v.as_str(), g.value)),
                        _ => None,
                    });
                    x.counters(family, f.help, label, series);
                }
            }
        }
        if let Some((name, help)) = lost_family {
            let losses = self.losses();
            x.counters(
                name,
                help,
                "reason",
                losses.iter().map(|(l, n)| (l.label, *n)),
            );
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::{Figure, Report, Section};

    fn report() -> Report {
        let mut r = Report::default();
        r.push(
            Figure::counter("t_sent_packets", "Sent.", 7)
                .line(Section::Sent, "sent")
                .summary("sent_ok"),
        );
        r.push(
            Figure::series("t_events", "counter", "captured", "Events.", 9)
                .line(Section::Traffic, "captured")
                .summary("captured"),
        );
        r.push(
            Figure::series("t_events", "counter", "gone", "Events.", 3)
                .summary("gone")
                .loss("gone_away", "went away"),
        );
        r.push(
            Figure::series("t_events", "counter", "late", "Events.", 0).loss("late", "came late"),
        );
        r.push(Figure::gauge("t_sessions", "Live.", 2).line(Section::Sessions, "active"));
        r.push(Figure::derived(1).line(Section::Kernel, "matched"));
        r
    }

    #[test]
    fn one_declaration_feeds_the_line_the_summary_and_the_losses() {
        let r = report();
        assert_eq!(
            r.line(),
            "kernel matched:1 | captured:9 | sessions active:2 | sent:7"
        );
        assert_eq!(
            r.summary_lines(),
            format!(
                "  {:<31} {:>12}\n  {:<31} {:>12}\n  {:<31} {:>12}\n",
                "sent_ok", 7, "captured", 9, "gone", 3
            )
        );
        assert_eq!(r.losses_in_words(), (3, Some("3 went away".to_string())));
        assert_eq!(r.losses().len(), 2);
    }

    #[test]
    fn families_are_exposed_once_with_every_series() {
        let text = report()
            .exposition(Some(("t_lost_segments", "Lost.")))
            .render();
        assert!(text.contains("t_sent_packets_total 7"), "{text}");
        assert!(
            text.contains("t_events_total{counter=\"captured\"} 9"),
            "{text}"
        );
        assert!(
            text.contains("t_events_total{counter=\"late\"} 0"),
            "{text}"
        );
        assert_eq!(text.matches("# HELP t_events ").count(), 1, "{text}");
        assert!(
            text.contains("t_lost_segments_total{reason=\"gone_away\"} 3"),
            "{text}"
        );
        assert!(text.contains("t_sessions 2"), "{text}");
    }
}
