//! Peak memory and CPU time of processes while a command runs.
//!
//! Memory is PSS from `/proc/<pid>/smaps_rollup` (shared pages split between the processes
//! that share them, so PostgreSQL's many backends are not counted many times), summed over
//! a group's pids and maximised over the run; CPU is user + system time spent during the run,
//! with that of the children each process reaped meanwhile.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Groups to watch: `name=pid[+pid…]`, e.g. `delivery=4242 postgres=10+11+12`.
    #[arg(long = "watch", value_name = "NAME=PIDS")]
    watch: Vec<String>,
    /// Where to append the JSON line of figures (stdout stays the command's).
    #[arg(long)]
    out: std::path::PathBuf,
    #[arg(long, default_value = "run")]
    label: String,
    /// The command to run while sampling.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn ticks_per_second() -> f64 {
    // The kernel's USER_HZ is 100 on every Linux this runs on; getconf would need libc.
    100.0
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // The children it has reaped too (cutime, cstime): PostgreSQL's postmaster reaps its
    // short-lived workers (autovacuum), whose time would otherwise go unseen.
    let cutime: u64 = fields.get(13)?.parse().ok()?;
    let cstime: u64 = fields.get(14)?.parse().ok()?;
    Some(utime + stime + cutime + cstime)
}

fn pss_kb(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .or_else(|_| std::fs::read_to_string(format!("/proc/{pid}/status")))
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("Pss:") || l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut groups: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for spec in &args.watch {
        let (name, pids) = spec
            .split_once('=')
            .context("--watch takes NAME=PID[+PID…]")?;
        let pids = pids
            .split('+')
            .filter(|p| !p.is_empty())
            .map(|p| p.parse::<u32>().with_context(|| format!("pid '{p}'")))
            .collect::<Result<Vec<_>, _>>()?;
        groups.insert(name.to_owned(), pids);
    }
    let start_ticks: BTreeMap<String, u64> = groups
        .iter()
        .map(|(n, pids)| (n.clone(), pids.iter().filter_map(|p| cpu_ticks(*p)).sum()))
        .collect();
    let mut peak_kb: BTreeMap<String, u64> = BTreeMap::new();
    let mut child = tokio::process::Command::new(&args.command[0])
        .args(&args.command[1..])
        .spawn()
        .with_context(|| format!("running {}", args.command[0]))?;
    let status = loop {
        for (name, pids) in &groups {
            let kb: u64 = pids.iter().filter_map(|p| pss_kb(*p)).sum();
            let peak = peak_kb.entry(name.clone()).or_default();
            *peak = (*peak).max(kb);
        }
        tokio::select! {
            status = child.wait() => break status?,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    };
    let mut figures = serde_json::Map::new();
    for (name, pids) in &groups {
        let end: u64 = pids.iter().filter_map(|p| cpu_ticks(*p)).sum();
        let cpu = end.saturating_sub(start_ticks[name]) as f64 / ticks_per_second();
        figures.insert(
            name.clone(),
            json!({"peak_mb": peak_kb.get(name).copied().unwrap_or(0) as f64 / 1024.0, "cpu_seconds": cpu}),
        );
    }
    let line = json!({"label": args.label, "resources": figures});
    use std::io::Write;
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)?;
    writeln!(out, "{line}")?;
    if !status.success() {
        bail!("{} failed: {status}", args.command.join(" "));
    }
    Ok(())
}
