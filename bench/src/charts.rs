//! `bench charts`: the report's SVG charts from the CSV files the lab
//! benchmarks wrote into `bench/results/`.

use std::path::Path;

use anyhow::{Context, Result};

use crate::chart;

fn read_csv(dir: &Path, name: &str) -> Result<Vec<Vec<String>>> {
    let text = std::fs::read_to_string(dir.join(name)).with_context(|| name.to_string())?;
    Ok(text
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect())
}

fn num(s: &str) -> f64 {
    s.parse().unwrap_or(0.0)
}

/// Distinct values of column `c`, in first-seen order.
fn distinct(rows: &[Vec<String>], c: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in rows {
        if !out.contains(&r[c]) {
            out.push(r[c].clone());
        }
    }
    out
}

/// Bars of column `value` per (load, mode).
fn per_load(rows: &[Vec<String>], value: usize) -> (Vec<String>, Vec<(String, Vec<f64>)>) {
    let loads = distinct(rows, 1);
    let series = distinct(rows, 0)
        .into_iter()
        .map(|mode| {
            let v = loads
                .iter()
                .map(|l| {
                    rows.iter()
                        .find(|r| r[0] == mode && &r[1] == l)
                        .map_or(0.0, |r| num(&r[value]))
                })
                .collect();
            (mode, v)
        })
        .collect();
    (loads, series)
}

pub fn charts(dir: &Path) -> Result<()> {
    let replay = read_csv(dir, "replay.csv")?;
    let (loads, ratio) = per_load(&replay, 4);
    chart::bars(
        &dir.join("replay_ratio.svg"),
        "Target / online requests",
        "ratio",
        &loads,
        &ratio,
    )?;
    let (loads, cpu) = per_load(&replay, 6);
    chart::bars(
        &dir.join("replay_cpu.svg"),
        "tcpcopy CPU per replayed request",
        "µs per request",
        &loads,
        &cpu,
    )?;
    let capture = read_csv(dir, "capture.csv")?;
    let curves: Vec<(String, Vec<(f64, f64)>)> = distinct(&capture, 0)
        .into_iter()
        .map(|mode| {
            let pts = capture
                .iter()
                .filter(|r| r[0] == mode)
                .map(|r| (num(&r[5]) / 1000.0, num(&r[4]) * 100.0))
                .collect();
            (mode, pts)
        })
        .collect();
    chart::lines(
        &dir.join("capture_loss.svg"),
        "Capture loss under the packet generator",
        "offered, thousand packets/s",
        "loss %",
        &curves,
    )?;
    let scaling = read_csv(dir, "scaling.csv")?;
    let cats: Vec<String> = scaling
        .iter()
        .map(|r| format!("{} worker(s)", r[0]))
        .collect();
    let vals = scaling.iter().map(|r| num(&r[3]) / 1000.0).collect();
    chart::bars(
        &dir.join("scaling.svg"),
        "AF_XDP capture on the 2-queue mirror",
        "thousand packets/s captured",
        &cats,
        &[("xdp".to_string(), vals)],
    )?;
    eprintln!("bench: wrote the charts in {}", dir.display());
    Ok(())
}

/// `bench soak-chart`: tcpcopy's memory over a soak run.
pub fn soak_chart(dir: &Path) -> Result<()> {
    let rows = read_csv(dir, "soak.csv")?;
    let pts = rows.iter().map(|r| (num(&r[1]), num(&r[4]))).collect();
    chart::lines(
        &dir.join("soak.svg"),
        "tcpcopy resident memory during the soak run",
        "minutes",
        "MiB",
        &[("RSS".to_string(), pts)],
    )
}
