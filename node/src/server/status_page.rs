//! The node's status page (`GET /` on the HTTP API): what an operator keeps open. The
//! node's identity, version and N/R/W; keys; requests by operation with the rate since
//! the page was last drawn; the foreground p99; hint and transfer backlogs; the ring as a
//! picture; every member with its zone, state, weight, ownership and reachability from
//! here. It redraws itself every 5 s (`<meta http-equiv="refresh">`, no script) and
//! links to `/metrics`. Self-contained: nothing is loaded from elsewhere.
//!
//! Pure: [`render`] turns a [`StatusView`] into HTML; the handler gathers the view.

use std::collections::BTreeMap;
use std::f64::consts::PI;
use std::fmt::Write as _;
use std::time::Duration;

use crate::NodeId;
use crate::cluster::Cluster;
use crate::metrics::{PageSnapshot, RequestTotals};
use crate::ring::{Ring, TokenRange};

/// How often the page redraws itself.
pub const REFRESH_SECONDS: u32 = 5;

/// Everything the page shows.
#[derive(Debug)]
pub struct StatusView<'a> {
    /// The member table and ring.
    pub cluster: &'a Cluster,
    /// The node's software version.
    pub version: &'a str,
    /// N, R and W.
    pub quorum: (u32, u32, u32),
    /// The metrics' page view.
    pub metrics: PageSnapshot,
    /// Request totals when the page was last drawn, and how long ago: the rates.
    pub previous: Option<(BTreeMap<&'static str, RequestTotals>, Duration)>,
}

/// Escapes text for HTML element content and quoted attribute values.
pub(super) fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A distinct color per ring member, hues spread by the golden angle.
fn colors(ring: &Ring) -> BTreeMap<NodeId, String> {
    ring.members()
        .enumerate()
        .map(|(index, (id, _))| {
            let hue = (index as f64 * 137.508) % 360.0;
            (id.clone(), format!("hsl({hue:.0},65%,50%)"))
        })
        .collect()
}

/// The ring's virtual nodes with adjacent ranges of one owner merged, in token order.
pub(super) fn owned_arcs(ring: &Ring) -> Vec<(TokenRange, NodeId)> {
    let mut arcs: Vec<(TokenRange, NodeId)> = Vec::new();
    for (range, owner) in ring.vnodes() {
        match arcs.last_mut() {
            Some((last, last_owner)) if last_owner == owner && last.end == range.start => {
                last.end = range.end;
            }
            _ => arcs.push((range, owner.clone())),
        }
    }
    arcs
}

const SVG_SIZE: f64 = 320.0;
const RING_RADIUS: f64 = 120.0;

/// A point on the ring at `fraction` of the way round, clockwise from the top.
fn ring_point(fraction: f64) -> (f64, f64) {
    let angle = fraction * 2.0 * PI - PI / 2.0;
    let center = SVG_SIZE / 2.0;
    (
        center + RING_RADIUS * angle.cos(),
        center + RING_RADIUS * angle.sin(),
    )
}

/// An inline SVG of the ring: each owned arc stroked in its owner's color.
fn ring_svg(ring: &Ring, colors: &BTreeMap<NodeId, String>) -> String {
    let center = SVG_SIZE / 2.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{SVG_SIZE}\" height=\"{SVG_SIZE}\" \
         viewBox=\"0 0 {SVG_SIZE} {SVG_SIZE}\" role=\"img\" aria-label=\"ring\">\
         <circle cx=\"{center}\" cy=\"{center}\" r=\"{RING_RADIUS}\" fill=\"none\" \
         stroke=\"#ddd\" stroke-width=\"28\"/>"
    );
    for (range, owner) in owned_arcs(ring) {
        let color = colors.get(&owner).map_or("#888", String::as_str);
        let title = format!(
            "<title>{} ({:.2}%)</title>",
            escape_html(owner.as_str()),
            range.fraction() * 100.0
        );
        if range.is_full() {
            let _ = write!(
                svg,
                "<circle cx=\"{center}\" cy=\"{center}\" r=\"{RING_RADIUS}\" fill=\"none\" \
                 stroke=\"{color}\" stroke-width=\"28\">{title}</circle>"
            );
            continue;
        }
        let start = range.start.0 as f64 / 2f64.powi(128);
        let (x1, y1) = ring_point(start);
        let (x2, y2) = ring_point(start + range.fraction());
        let large_arc = u8::from(range.fraction() > 0.5);
        let _ = write!(
            svg,
            "<path d=\"M {x1:.2} {y1:.2} A {RING_RADIUS} {RING_RADIUS} 0 {large_arc} 1 \
             {x2:.2} {y2:.2}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"28\">\
             {title}</path>"
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Requests per second of `now` over `before`, `elapsed` apart.
fn rate(now: u64, before: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        return 0.0;
    }
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    let delta = now.saturating_sub(before) as f64;
    delta / seconds
}

/// The requests table: totals by operation, and rates since the previous drawing.
fn requests_table(view: &StatusView<'_>) -> String {
    let mut rows = String::new();
    for (op, totals) in &view.metrics.requests {
        let rates = view.previous.as_ref().map(|(before, elapsed)| {
            let before = before.get(op).copied().unwrap_or_default();
            (
                rate(totals.served, before.served, *elapsed),
                rate(
                    totals.refused + totals.failed,
                    before.refused + before.failed,
                    *elapsed,
                ),
            )
        });
        let (served_rate, error_rate) = rates.map_or_else(
            || ("-".to_owned(), "-".to_owned()),
            |(served, errors)| (format!("{served:.1}"), format!("{errors:.1}")),
        );
        let _ = write!(
            rows,
            "<tr><td>{op}</td><td>{}</td><td>{}</td><td>{}</td><td>{served_rate}</td>\
             <td>{error_rate}</td></tr>",
            totals.served, totals.refused, totals.failed
        );
    }
    if rows.is_empty() {
        rows.push_str("<tr><td colspan=\"6\">no requests yet</td></tr>");
    }
    format!(
        "<h2>Requests</h2><table id=\"requests\"><thead><tr><th>operation</th><th>served</th>\
         <th>refused</th><th>failed</th><th>served/s</th><th>errors/s</th></tr></thead>\
         <tbody>{rows}</tbody></table>"
    )
}

/// A backlog per peer, or `none`.
fn backlog(entries: &BTreeMap<String, u64>, unit: &str) -> String {
    if entries.is_empty() {
        return "none".to_owned();
    }
    entries
        .iter()
        .map(|(peer, count)| format!("{} ({count} {unit})", escape_html(peer)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The status page.
pub fn render(view: &StatusView<'_>) -> String {
    let cluster = view.cluster;
    let ring = cluster.ring();
    let table = cluster.table();
    let colors = colors(&ring);
    let ownership = ring.ownership();
    let me = cluster.me();
    let mut rows = String::new();
    for member in table.iter() {
        let id = member.id();
        let swatch = colors.get(id).map_or("transparent", String::as_str);
        let share = ownership.get(id).copied().unwrap_or(0.0) * 100.0;
        let reachable = if id == me {
            "this node"
        } else if cluster.is_available(id) {
            "yes"
        } else {
            "no"
        };
        let _ = write!(
            rows,
            "<tr><td><span class=\"swatch\" style=\"background:{swatch}\"></span>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{share:.2}%</td><td>{reachable}</td></tr>",
            escape_html(id.as_str()),
            escape_html(member.address()),
            escape_html(member.zone().unwrap_or("-")),
            member.state(),
            member.weight(),
        );
    }
    let (n, r, w) = view.quorum;
    let p99 = view.metrics.foreground_p99.as_secs_f64() * 1000.0;
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>dynamo node {me_html}</title><style>\
         body{{font-family:sans-serif;margin:2em}}\
         table{{border-collapse:collapse;margin-bottom:1em}}td,th{{border:1px solid #ccc;padding:4px 8px}}\
         .swatch{{display:inline-block;width:10px;height:10px;margin-right:6px}}\
         </style></head><body>\
         <h1>Dynamo node {me_html}</h1>\
         <table id=\"node\"><tbody>\
         <tr><th>version</th><td>{version}</td></tr>\
         <tr><th>quorum</th><td>N={n} R={r} W={w}</td></tr>\
         <tr><th>keys</th><td>{keys}</td></tr>\
         <tr><th>foreground p99</th><td>{p99:.2} ms</td></tr>\
         <tr><th>hint backlog</th><td>{hints}</td></tr>\
         <tr><th>transfer backlog</th><td>{transfers}</td></tr>\
         </tbody></table>\
         {requests}\
         <h2>Ring</h2>\
         <p>Epoch {epoch}, {members} ring members, {vnodes} virtual nodes, {zones} zone(s).</p>\
         {svg}\
         <table id=\"members\"><thead><tr><th>node</th><th>address</th><th>zone</th><th>state</th>\
         <th>weight</th><th>ownership</th><th>reachable</th></tr></thead><tbody>{rows}</tbody></table>\
         <p><a href=\"/metrics\">/metrics</a> (Prometheus); this page redraws every \
         {REFRESH_SECONDS} s.</p>\
         </body></html>\n",
        me_html = escape_html(me.as_str()),
        version = escape_html(view.version),
        keys = view.metrics.keys,
        hints = backlog(&view.metrics.hints, "keys"),
        transfers = backlog(&view.metrics.transfer_pending, "ranges"),
        requests = requests_table(view),
        epoch = ring.epoch(),
        members = ring.len(),
        vnodes = ring.vnode_count(),
        zones = ring.zone_count(),
        svg = ring_svg(&ring, &colors),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_second_since_the_previous_drawing() {
        assert!((rate(150, 50, Duration::from_secs(4)) - 25.0).abs() < 1e-9);
        assert_eq!(rate(5, 9, Duration::from_secs(1)), 0.0, "a restart's reset");
        assert_eq!(rate(5, 0, Duration::ZERO), 0.0);
    }
}
