//! Inline SVG charts, drawn on the server: they need no script and print as they show.

use maud::{Markup, html};

/// Plot size in SVG units; the SVG scales to its container's width.
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 180.0;
const PAD: f64 = 28.0;

/// A line chart of `points` (label, value) in order, with the largest value marked on
/// the y axis and the first and last labels on the x axis. `id` names it for tests and
/// styles.
pub fn line(id: &str, title: &str, points: &[(String, u64)]) -> Markup {
    let max = points.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    let n = points.len().max(2) - 1;
    let x = |i: usize| PAD + (WIDTH - 2.0 * PAD) * i as f64 / n as f64;
    let y = |v: u64| HEIGHT - PAD - (HEIGHT - 2.0 * PAD) * v as f64 / max as f64;
    let path: String = points
        .iter()
        .enumerate()
        .map(|(i, (_, v))| format!("{:.1},{:.1}", x(i), y(*v)))
        .collect::<Vec<_>>()
        .join(" ");
    let first = points.first().map(|(l, _)| l.as_str()).unwrap_or("");
    let last = points.last().map(|(l, _)| l.as_str()).unwrap_or("");
    html! {
        figure.chart {
            figcaption { (title) }
            svg id=(id) role="img" aria-label=(title) viewBox=(format!("0 0 {WIDTH} {HEIGHT}"))
                preserveAspectRatio="none" {
                line.axis x1=(PAD) y1=(HEIGHT - PAD) x2=(WIDTH - PAD) y2=(HEIGHT - PAD) {}
                line.axis x1=(PAD) y1=(PAD) x2=(PAD) y2=(HEIGHT - PAD) {}
                text x=(2) y=(PAD) { (max) }
                text x=(2) y=(HEIGHT - PAD) { "0" }
                text x=(PAD) y=(HEIGHT - 6.0) { (first) }
                text x=(WIDTH - PAD) y=(HEIGHT - 6.0) text-anchor="end" { (last) }
                polyline.series points=(path) {}
            }
        }
    }
}

/// Horizontal bars of `rows` (label, value), largest first as given.
pub fn bars(id: &str, title: &str, rows: &[(String, u64)]) -> Markup {
    let max = rows.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    let row_height = 22.0;
    let height = row_height * rows.len().max(1) as f64 + 4.0;
    let label_width = 160.0;
    html! {
        figure.chart {
            figcaption { (title) }
            svg id=(id) role="img" aria-label=(title) viewBox=(format!("0 0 {WIDTH} {height}")) {
                @for (i, (label, value)) in rows.iter().enumerate() {
                    @let top = 2.0 + row_height * i as f64;
                    text x=(0) y=(top + 15.0) { (label) }
                    rect.bar x=(label_width) y=(top + 3.0) height=(row_height - 6.0)
                        width=(format!("{:.1}", (WIDTH - label_width - 60.0) * *value as f64 / max as f64)) {}
                    text x=(WIDTH - 55.0) y=(top + 15.0) { (value) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_chart_has_one_point_per_value_scaled_to_the_largest() {
        let points: Vec<(String, u64)> = vec![("a".into(), 0), ("b".into(), 10), ("c".into(), 5)];
        let svg = line("t", "Tokens", &points).into_string();
        assert!(svg.contains("<svg id=\"t\""), "{svg}");
        let polyline = svg.split("points=\"").nth(1).expect("points");
        let coords: Vec<&str> = polyline
            .split('"')
            .next()
            .expect("a list")
            .split(' ')
            .collect();
        assert_eq!(coords.len(), 3);
        assert!(
            coords[1].ends_with(&format!("{:.1}", PAD)),
            "the largest at the top: {coords:?}"
        );
    }

    #[test]
    fn labels_are_escaped() {
        let svg = bars("b", "By user", &[("<script>".into(), 3)]).into_string();
        assert!(
            svg.contains("&lt;script&gt;") && !svg.contains("<script>"),
            "{svg}"
        );
    }
}
