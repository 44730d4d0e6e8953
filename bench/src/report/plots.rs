//! The PNG plots of BENCHMARKS.md (plotters, bitmap backend). Text is drawn
//! with ab_glyph from DejaVu Sans (Debian's fonts-dejavu-core, installed by
//! `cargo xtask setup`), so no fontconfig is involved.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::{
    coord::{types::RangedCoordf64, Shift},
    prelude::*,
    style::{register_font, FontStyle},
};

use crate::{
    results::{Churn, Hook, Results, Scale, Setup},
    stats::{paired_ratios, Summary},
};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const SIZE: (u32, u32) = (1000, 560);
const BLUE: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const ORANGE: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const GREEN: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const GREY: RGBColor = RGBColor(0x7f, 0x7f, 0x7f);

/// Draws every plot into `dir`; returns (case, file name) pairs.
pub fn draw_all(r: &Results, dir: &Path) -> Result<Vec<(&'static str, String)>> {
    load_font()?;
    let mut out = Vec::new();
    if let Some(h) = &r.hook {
        hook(h, &dir.join("hook.png"))?;
        out.push(("hook", "hook.png".to_string()));
    }
    if let Some(s) = &r.scale {
        scale(s, &dir.join("scale.png"))?;
        out.push(("scale", "scale.png".to_string()));
    }
    if let Some(s) = &r.setup {
        setup(s, &dir.join("setup.png"))?;
        out.push(("setup", "setup.png".to_string()));
    }
    if let Some(c) = &r.churn {
        churn(c, &dir.join("churn.png"))?;
        out.push(("churn", "churn.png".to_string()));
    }
    Ok(out)
}

fn load_font() -> Result<()> {
    let bytes = std::fs::read(FONT).with_context(|| {
        format!(
            "reading {FONT} (Debian package fonts-dejavu-core; `cargo xtask setup` installs it)"
        )
    })?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{FONT} is not a usable font"))
}

/// Labels for a log axis of N: only the powers of ten (plotters would
/// otherwise label every minor tick, and the labels run into each other).
fn n_label(x: &f64) -> String {
    let l = x.log10();
    if (l - l.round()).abs() < 1e-6 {
        super::thousands(*x)
    } else {
        String::new()
    }
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a plot: {e:?}")
}

fn font(size: u32) -> TextStyle<'static> {
    ("sans-serif", size).into_font().color(&BLACK)
}

fn canvas(path: &Path) -> Result<DrawingArea<BitMapBackend<'_>, Shift>> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    Ok(root)
}

type BarChart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A bar at x (width `w`) from 0 to the median, with a min–max whisker.
fn bar(chart: &mut BarChart, s: &Summary, x: f64, w: f64, color: RGBColor) -> Result<()> {
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [(x - w / 2.0, 0.0), (x + w / 2.0, s.median)],
            color.mix(0.8).filled(),
        )))
        .map_err(err)?;
    let whisker = [
        vec![(x, s.min), (x, s.max)],
        vec![(x - w / 6.0, s.min), (x + w / 6.0, s.min)],
        vec![(x - w / 6.0, s.max), (x + w / 6.0, s.max)],
    ];
    chart
        .draw_series(
            whisker
                .into_iter()
                .map(|p| PathElement::new(p, BLACK.stroke_width(2))),
        )
        .map_err(err)?;
    Ok(())
}

// ----------------------------------------------------------------------------

fn hook(h: &Hook, path: &Path) -> Result<()> {
    let short = |k: &str| match k {
        "v6-prefix-none" => "prefix, no program",
        "v6-prefix-empty" => "prefix, empty prog.",
        "v6-prefix-guard" => "prefix, guard",
        "v6-prefix-freebind" => "prefix, freebind",
        "v6-outside-none" => "outside, no program",
        "v6-outside-guard" => "outside, guard",
        "v4-none" => "IPv4 127/8",
        _ => "?",
    };
    let bars: Vec<(&str, Summary, Option<Summary>, RGBColor)> = h
        .variants
        .iter()
        .map(|v| {
            let base = v
                .baseline
                .as_ref()
                .and_then(|b| h.variants.iter().find(|x| &x.key == b))
                .map(|b| Summary::of(&paired_ratios(&v.us_per_op, &b.us_per_op)));
            let color = if v.key.ends_with("-none") {
                GREY
            } else if v.key.ends_with("-empty") {
                ORANGE
            } else {
                BLUE
            };
            (short(&v.key), Summary::of(&v.us_per_op), base, color)
        })
        .collect();
    let ymax = bars.iter().map(|b| b.1.max).fold(0.0, f64::max) * 1.25;
    let root = canvas(path)?;
    let n = bars.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Hook overhead: socket+bind+listen+close (median, min–max; label: ratio to baseline)",
            font(20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..n - 0.5, 0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .disable_x_mesh()
        .x_labels(bars.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < bars.len() {
                bars[i as usize].0.to_string()
            } else {
                String::new()
            }
        })
        .x_label_style(font(15))
        .y_label_style(font(15))
        .y_desc("CPU µs per operation")
        .axis_desc_style(font(16))
        .draw()
        .map_err(err)?;
    for (i, (_, s, ratio, color)) in bars.iter().enumerate() {
        bar(&mut chart, s, i as f64, 0.6, *color)?;
        let label = match ratio {
            Some(r) => format!("{:.3}×", r.median),
            None => format!("{:.2} µs", s.median),
        };
        chart
            .draw_series(std::iter::once(Text::new(
                label,
                (i as f64 - 0.22, s.max + ymax * 0.05),
                font(16),
            )))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

// ----------------------------------------------------------------------------

fn scale(s: &Scale, path: &Path) -> Result<()> {
    let root = canvas(path)?;
    let all = || s.variants.iter().flat_map(|v| v.points.iter());
    let xmin = all().map(|p| p.n as f64).fold(f64::MAX, f64::min) / 2.0;
    let xmax = all().map(|p| p.n as f64).fold(1.0, f64::max) * 2.0;
    let ymax = all()
        .flat_map(|p| p.mean_us.iter())
        .fold(0.0f64, |a, &b| a.max(b))
        * 1.3;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Scale: CPU per socket+bind+listen with N listeners on one port (median, min–max)",
            font(20),
        )
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d((xmin..xmax).log_scale(), 0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc("N listeners (log)")
        .y_desc("CPU µs per bind, mean over all N")
        .x_label_formatter(&n_label)
        .x_label_style(font(15))
        .y_label_style(font(15))
        .axis_desc_style(font(16))
        .draw()
        .map_err(err)?;
    for v in &s.variants {
        let color = match v.key.as_str() {
            "guard" => BLUE,
            "none" => GREY,
            _ => GREEN,
        };
        let pts: Vec<(f64, Summary)> = v
            .points
            .iter()
            .map(|p| (p.n as f64, Summary::of(&p.mean_us)))
            .collect();
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|(x, s)| (*x, s.median)),
                color.stroke_width(3),
            ))
            .map_err(err)?
            .label(v.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        chart
            .draw_series(pts.iter().map(|(x, s)| {
                PathElement::new(vec![(*x, s.min), (*x, s.max)], color.stroke_width(2))
            }))
            .map_err(err)?;
        chart
            .draw_series(
                pts.iter()
                    .map(|(x, s)| Circle::new((*x, s.median), 5, color.filled())),
            )
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .label_font(font(15))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

// ----------------------------------------------------------------------------

fn setup(s: &Setup, path: &Path) -> Result<()> {
    let root = canvas(path)?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    let xmin = s.points.first().map(|p| p.n as f64).unwrap_or(1.0) / 2.0;
    let xmax = s.points.last().map(|p| p.n as f64).unwrap_or(10.0) * 2.0;

    // A sample stopped at the cap is plotted at the number of addresses it
    // had added by then (and labelled).
    let added = |p: &crate::results::SetupPoint| {
        Summary::of(&p.added.iter().map(|&a| a as f64).collect::<Vec<_>>()).median
    };
    let capped: Vec<(f64, bool)> = s
        .points
        .iter()
        .map(|p| (added(p), added(p) < p.n as f64))
        .collect();

    // Time, log-log.
    let per: Vec<(f64, Summary)> = s
        .points
        .iter()
        .zip(&capped)
        .map(|(p, (x, _))| (*x, Summary::of(&p.per_address.seconds)))
        .collect();
    let route = Summary::of(&s.route.seconds);
    let pandad = Summary::of(&s.pandad.seconds);
    let tmax = per.iter().map(|p| p.1.max).fold(pandad.max, f64::max) * 1e3 * 3.0;
    let tmin = route.min.min(pandad.min) * 1e3 / 3.0;
    let mut chart = ChartBuilder::on(&left)
        .caption("Time to make N addresses bindable", font(18))
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d((xmin..xmax).log_scale(), (tmin..tmax).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc("N addresses (log)")
        .y_desc("ms (log)")
        .x_label_formatter(&n_label)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_label_style(font(14))
        .y_label_style(font(14))
        .axis_desc_style(font(15))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            per.iter().map(|(x, s)| (*x, s.median * 1e3)),
            ORANGE.stroke_width(3),
        ))
        .map_err(err)?
        .label("one /128 per address (ip -batch)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], ORANGE.stroke_width(3)));
    chart
        .draw_series(
            per.iter()
                .map(|(x, s)| Circle::new((*x, s.median * 1e3), 5, ORANGE.filled())),
        )
        .map_err(err)?;
    for ((x, t), (_, stopped)) in per.iter().zip(&capped) {
        if *stopped {
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("stopped at {:.0} s:", t.median),
                    (*x * 0.56, t.median * 1e3 / 6.0),
                    font(13),
                )))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{} added", super::thousands(*x)),
                    (*x * 0.56, t.median * 1e3 / 10.5),
                    font(13),
                )))
                .map_err(err)?;
        }
    }
    for (name, sm, color) in [
        ("panda: anchor + route", route, BLUE),
        ("pandad start → ready", pandad, GREEN),
    ] {
        chart
            .draw_series(LineSeries::new(
                [(xmin, sm.median * 1e3), (xmax, sm.median * 1e3)],
                color.stroke_width(3),
            ))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .label_font(font(13))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;

    // Memory, linear in MiB.
    let mem: Vec<(f64, Summary)> = s
        .points
        .iter()
        .zip(&capped)
        .map(|(p, (x, _))| {
            let mib: Vec<f64> = p
                .per_address
                .sunreclaim_kb
                .iter()
                .map(|k| k / 1024.0)
                .collect();
            (*x, Summary::of(&mib))
        })
        .collect();
    let route_mib: Vec<f64> = s.route.sunreclaim_kb.iter().map(|k| k / 1024.0).collect();
    let route_m = Summary::of(&route_mib);
    let mmax = mem.iter().map(|m| m.1.max).fold(1.0, f64::max) * 1.2;
    let mmin = mem
        .iter()
        .map(|m| m.1.min)
        .fold(route_m.min, f64::min)
        .min(0.0)
        * 1.2
        - 0.5;
    let mut chart = ChartBuilder::on(&right)
        .caption("Unreclaimable slab added (SUnreclaim)", font(18))
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d((xmin..xmax).log_scale(), mmin..mmax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc("N addresses (log)")
        .y_desc("MiB")
        .x_label_formatter(&n_label)
        .x_label_style(font(14))
        .y_label_style(font(14))
        .axis_desc_style(font(15))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            mem.iter().map(|(x, s)| (*x, s.median)),
            ORANGE.stroke_width(3),
        ))
        .map_err(err)?
        .label("one /128 per address")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], ORANGE.stroke_width(3)));
    chart
        .draw_series(
            mem.iter().map(|(x, s)| {
                PathElement::new(vec![(*x, s.min), (*x, s.max)], ORANGE.stroke_width(2))
            }),
        )
        .map_err(err)?;
    chart
        .draw_series(
            mem.iter()
                .map(|(x, s)| Circle::new((*x, s.median), 5, ORANGE.filled())),
        )
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            [(xmin, route_m.median), (xmax, route_m.median)],
            BLUE.stroke_width(3),
        ))
        .map_err(err)?
        .label("panda: anchor + route")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(3)));
    chart
        .configure_series_labels()
        .label_font(font(13))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

// ----------------------------------------------------------------------------

fn churn(c: &Churn, path: &Path) -> Result<()> {
    let root = canvas(path)?;
    // Groups by range, bars by source.
    let mut ranges: Vec<&str> = Vec::new();
    for v in &c.variants {
        if !ranges.contains(&v.range.as_str()) {
            ranges.push(&v.range);
        }
    }
    let ymax = c
        .variants
        .iter()
        .flat_map(|v| v.conns_per_s.iter())
        .fold(1.0f64, |a, &b| a.max(b))
        * 1.3;
    let width = ranges.len() as f64 * 3.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Connection churn for {} s: connections per second (median, min–max)",
                c.seconds
            ),
            font(20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5f64..width - 1.5, 0f64..ymax)
        .map_err(err)?;
    let labels: Vec<(f64, String)> = ranges
        .iter()
        .enumerate()
        .map(|(g, r)| (g as f64 * 3.0 + 0.5, format!("ephemeral ports {r}")))
        .collect();
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .disable_x_mesh()
        .x_labels(ranges.len() * 6 + 1)
        .x_label_formatter(&|x| {
            labels
                .iter()
                .find(|(lx, _)| (lx - x).abs() < 0.26)
                .map(|(_, l)| l.clone())
                .unwrap_or_default()
        })
        .x_label_style(font(15))
        .y_label_style(font(15))
        .y_label_formatter(&|y| super::thousands(*y))
        .y_desc("connections per second")
        .axis_desc_style(font(16))
        .draw()
        .map_err(err)?;
    for (g, r) in ranges.iter().enumerate() {
        for (k, (source, color)) in [("::1", GREY), ("spread", BLUE)].into_iter().enumerate() {
            let Some(v) = c
                .variants
                .iter()
                .find(|v| v.range == *r && v.source == source)
            else {
                continue;
            };
            let x = g as f64 * 3.0 + k as f64;
            let s = Summary::of(&v.conns_per_s);
            bar(&mut chart, &s, x, 0.8, color)?;
            let errors = Summary::of(
                &v.eaddrnotavail
                    .iter()
                    .map(|&e| e as f64)
                    .collect::<Vec<_>>(),
            );
            let who = if source == "spread" {
                format!("{} sources", super::thousands(c.spread_sources as f64))
            } else {
                "::1".to_string()
            };
            for (line, text) in [
                (0.13, who),
                (0.08, format!("{}/s", super::thousands(s.median))),
                (
                    0.03,
                    format!("{} EADDRNOTAVAIL", super::thousands(errors.median)),
                ),
            ] {
                chart
                    .draw_series(std::iter::once(Text::new(
                        text,
                        (x - 0.4, s.max + ymax * line),
                        font(14),
                    )))
                    .map_err(err)?;
            }
        }
    }
    root.present().map_err(err)?;
    Ok(())
}
