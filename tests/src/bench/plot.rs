//! SVG plots (plotters, SVG backend only): medians as lines and points, the spread (min–max of
//! the interleaved runs) as a vertical bar at each point.

use plotters::prelude::*;

use super::Spread;

/// One line of a plot: its name and `(x, spread)` points.
pub type Series = (String, Vec<(f64, Spread)>);

/// Axis options of [`lines`].
pub struct Axes<'a> {
    pub title: &'a str,
    pub x: &'a str,
    pub y: &'a str,
    pub log_x: bool,
    pub log_y: bool,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(127, 127, 127),
];

fn range(v: impl Iterator<Item = f64> + Clone, log: bool) -> (f64, f64) {
    let lo = v.clone().fold(f64::INFINITY, f64::min);
    let hi = v.fold(f64::NEG_INFINITY, f64::max);
    if log {
        let lo = lo.max(1e-9);
        (lo / 1.5, hi * 1.5)
    } else {
        let pad = ((hi - lo) * 0.08).max(hi.abs() * 0.05).max(1e-9);
        ((lo - pad).min(0.0_f64.max(lo - pad)), hi + pad)
    }
}

/// A line plot of `series` as an SVG document.
pub fn lines(ax: &Axes<'_>, series: &[Series]) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 420)).into_drawing_area();
        root.fill(&WHITE).expect("fill");
        let xs = series.iter().flat_map(|s| s.1.iter().map(|p| p.0));
        let ys = series
            .iter()
            .flat_map(|s| s.1.iter().flat_map(|p| [p.1.min, p.1.max]));
        let (x0, x1) = range(xs, ax.log_x);
        let (y0, y1) = range(ys, ax.log_y);
        let mut b = ChartBuilder::on(&root);
        b.caption(ax.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64);
        // Four axis kinds: each is its own chart type.
        macro_rules! draw {
            ($xr:expr, $yr:expr) => {{
                let mut c = b.build_cartesian_2d($xr, $yr).expect("chart");
                c.configure_mesh()
                    .x_desc(ax.x)
                    .y_desc(ax.y)
                    .draw()
                    .expect("mesh");
                for (i, (name, pts)) in series.iter().enumerate() {
                    let col = COLORS[i % COLORS.len()];
                    c.draw_series(LineSeries::new(
                        pts.iter().map(|p| (p.0, p.1.median)),
                        col.stroke_width(2),
                    ))
                    .expect("line")
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2))
                    });
                    c.draw_series(
                        pts.iter()
                            .map(|p| Circle::new((p.0, p.1.median), 3, col.filled())),
                    )
                    .expect("points");
                    c.draw_series(pts.iter().map(|p| {
                        PathElement::new(vec![(p.0, p.1.min), (p.0, p.1.max)], col.stroke_width(1))
                    }))
                    .expect("spread");
                }
                c.configure_series_labels()
                    .position(SeriesLabelPosition::UpperLeft)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .draw()
                    .expect("legend");
            }};
        }
        match (ax.log_x, ax.log_y) {
            (true, true) => draw!((x0..x1).log_scale(), (y0..y1).log_scale()),
            (true, false) => draw!((x0..x1).log_scale(), y0..y1),
            (false, true) => draw!(x0..x1, (y0..y1).log_scale()),
            (false, false) => draw!(x0..x1, y0..y1),
        }
        root.present().expect("svg");
    }
    svg
}
