//! The self-contained HTML report: verdicts in words, then charts drawn by the vendored
//! uPlot (MIT, `analyze/assets/`) from a JSON blob embedded in the page. Works offline.

use std::path::Path;

use serde_json::{json, Value};

use crate::report::{fmt_offset, fmt_us, fmt_utc, Report, Severity};
use crate::AnalyzeError;

const UPLOT_JS: &str = include_str!("../assets/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../assets/uPlot.min.css");

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn ms(v: Option<f64>) -> Value {
    v.filter(|x| x.is_finite())
        .map_or(Value::Null, |x| json!((x / 1e3 * 1000.0).round() / 1000.0))
}

fn num(v: Option<f64>) -> Value {
    v.filter(|x| x.is_finite())
        .map_or(Value::Null, |x| json!(x))
}

fn series(label: &str, values: Vec<Value>, color: &str, scale: &str) -> Value {
    json!({ "label": label, "values": values, "color": color, "scale": scale })
}

/// Chart specs the page script draws. Each: id, title, time (x is a Unix time in s),
/// x, series [{label, values, color, scale}], y/y2 axis labels, marks [{x, label}].
fn charts(r: &Report) -> Vec<Value> {
    let mut out = Vec::new();
    let w = &r.windows;
    let x: Vec<Value> = w.iter().map(|w| json!(w.start_us as f64 / 1e6)).collect();
    let pick = |f: &dyn Fn(&crate::report::WindowStats) -> Option<f64>| -> Vec<Value> {
        w.iter().map(|w| ms(f(w))).collect()
    };
    out.push(json!({
        "id": "latency", "title": "Latency percentiles per window (ms)", "time": true, "x": x,
        "y": "ms",
        "series": [
            series("TTFT p50", pick(&|w| w.ttft.map(|p| p.p50)), "#1f77b4", "y"),
            series("TTFT p90", pick(&|w| w.ttft.map(|p| p.p90)), "#6baed6", "y"),
            series("TTFT p99", pick(&|w| w.ttft.map(|p| p.p99)), "#08306b", "y"),
            series("TPOT p50", pick(&|w| w.tpot.map(|p| p.p50)), "#ff7f0e", "y"),
            series("TPOT p99", pick(&|w| w.tpot.map(|p| p.p99)), "#a63603", "y"),
            series("E2E p99", pick(&|w| w.e2e.map(|p| p.p99)), "#2ca02c", "y"),
        ],
        "marks": r.drift.iter().filter_map(|d| d.step.as_ref().map(|s| json!({"x": s.at_us as f64 / 1e6, "label": format!("{} step", d.metric)}))).collect::<Vec<_>>(),
    }));
    out.push(json!({
        "id": "throughput", "title": "Throughput per window", "time": true, "x": x,
        "y": "req/s", "y2": "tokens/s",
        "series": [
            series("requests/s", w.iter().map(|w| num(Some(w.requests_per_s))).collect(), "#1f77b4", "y"),
            series("error rate %", w.iter().map(|w| num(Some(w.error_rate * 100.0))).collect(), "#d62728", "y"),
            series("output tokens/s", w.iter().map(|w| num(Some(w.output_tokens_per_s))).collect(), "#9467bd", "y2"),
            series("input tokens/s", w.iter().map(|w| num(Some(w.input_tokens_per_s))).collect(), "#c5b0d5", "y2"),
        ],
        "marks": [],
    }));
    out.push(json!({
        "id": "ratio", "title": "TTFT p99 / p50 per window (starvation)", "time": true, "x": x,
        "y": "ratio",
        "series": [
            series("p99/p50", w.iter().map(|w| num(w.ttft_p99_over_p50)).collect(), "#8c564b", "y"),
            series("threshold", w.iter().map(|_| json!(r.starvation.ratio_threshold)).collect(), "#d62728", "y"),
        ],
        "marks": [],
    }));
    if w.iter()
        .any(|w| w.queue_depth_mean.is_some() || w.kv_cache_mean.is_some())
    {
        out.push(json!({
            "id": "server", "title": "Server state per window", "time": true, "x": x,
            "y": "requests", "y2": "KV %",
            "series": [
                series("queue depth", w.iter().map(|w| num(w.queue_depth_mean)).collect(), "#e377c2", "y"),
                series("running", w.iter().map(|w| num(w.running_mean)).collect(), "#17becf", "y"),
                series("KV cache peak %", w.iter().map(|w| num(w.kv_cache_max.map(|k| k * 100.0))).collect(), "#bcbd22", "y2"),
            ],
            "marks": [],
        }));
    }
    if !r.memory.is_empty() {
        // Measured means per window, the fitted line, and its projection half a run ahead.
        let start = r.summary.start_us as f64 / 1e6;
        let last = w.last().map_or(start, |w| w.start_us as f64 / 1e6);
        let extra = ((last - start) * 0.5).max(60.0);
        let step = r.window_s.max(1.0);
        let mut xs: Vec<f64> = w.iter().map(|w| w.start_us as f64 / 1e6).collect();
        let mut t = last + step;
        while t <= last + extra && xs.len() < w.len() + 2000 {
            xs.push(t);
            t += step;
        }
        let palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"];
        let mut ser = Vec::new();
        for (i, m) in r.memory.iter().enumerate() {
            let color = palette[i % palette.len()];
            let measured: Vec<Value> = xs
                .iter()
                .enumerate()
                .map(|(j, _)| {
                    num(w
                        .get(j)
                        .and_then(|w| w.memory_bytes.get(&m.series))
                        .map(|b| b / 1048576.0))
                })
                .collect();
            let trend: Vec<Value> = xs
                .iter()
                .map(|&t| {
                    let hours = (t + step / 2.0 - start) / 3600.0;
                    json!(
                        ((m.fit_intercept_mb + m.slope_mb_per_hour * hours) * 10.0).round() / 10.0
                    )
                })
                .collect();
            ser.push(series(&format!("{} MiB", m.series), measured, color, "y"));
            ser.push(json!({"label": format!("trend {:?} {:.0} MiB/h (dashed: projection)", m.shape, m.slope_mb_per_hour), "values": trend, "color": color, "scale": "y", "dash": true}));
        }
        out.push(json!({
            "id": "memory", "title": "Memory with trend and projection (MiB)", "time": true,
            "x": xs, "y": "MiB", "series": ser,
            "marks": [{"x": last, "label": "end of run"}],
        }));
    }
    if let Some(c) = &r.capacity {
        let xs: Vec<Value> = c.levels.iter().map(|l| json!(l.offered_rps)).collect();
        let marks: Vec<Value> = c
            .cliff
            .map(|i| vec![json!({"x": c.levels[i].offered_rps, "label": "cliff"})])
            .unwrap_or_default()
            .into_iter()
            .chain(
                c.saturation
                    .map(|i| json!({"x": c.levels[i].offered_rps, "label": "throughput flat"})),
            )
            .collect();
        out.push(json!({
            "id": "load", "title": "Latency and throughput against offered load (req/s)", "time": false,
            "x": xs, "y": "ms", "y2": "req/s",
            "series": [
                series("TTFT p95 ms", c.levels.iter().map(|l| ms(l.ttft.map(|p| p.p95))).collect(), "#1f77b4", "y"),
                series("E2E p95 ms", c.levels.iter().map(|l| ms(l.e2e.map(|p| p.p95))).collect(), "#2ca02c", "y"),
                series("achieved req/s", c.levels.iter().map(|l| num(Some(l.achieved_rps))).collect(), "#d62728", "y2"),
            ],
            "marks": marks,
        }));
    }
    if let Some(p) = &r.production {
        let qs: Vec<Value> = (1..=99).map(|q| json!(q)).collect();
        let vals =
            |v: &Vec<f64>| -> Vec<Value> { (0..99).map(|i| num(v.get(i).copied())).collect() };
        out.push(json!({
            "id": "prompt_dist", "title": "Prompt tokens by percentile: production vs replay", "time": false,
            "x": qs, "y": "tokens",
            "series": [
                series("production", vals(&p.production.prompt_quantiles), "#7f7f7f", "y"),
                series("replay", vals(&p.replay.prompt_quantiles), "#1f77b4", "y"),
            ],
            "marks": [],
        }));
        out.push(json!({
            "id": "output_dist", "title": "Output tokens by percentile: production vs replay", "time": false,
            "x": qs, "y": "tokens",
            "series": [
                series("production", vals(&p.production.output_quantiles), "#7f7f7f", "y"),
                series("replay", vals(&p.replay.output_quantiles), "#ff7f0e", "y"),
            ],
            "marks": [],
        }));
    }
    out
}

const PAGE_CSS: &str = r#"
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px} .sub{color:#666;margin-top:0}
.v{border-left:5px solid #999;padding:6px 10px;margin:6px 0;background:#fafafa}
.v.fail{border-color:#d62728;background:#fdecea}.v.warn{border-color:#ff9800;background:#fff6e5}
.v.info{border-color:#1f77b4}.v.pass{border-color:#2ca02c}
.v .h{font-weight:600}.v .d{color:#555;font-size:.92em}.v .r{color:#0b5394;font-size:.92em}
table{border-collapse:collapse;margin:8px 0 16px}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}
.chart{margin:18px 0}.chart h3{font-size:1.05em;margin:4px 0}
"#;

const PAGE_JS: &str = r#"
(function(){
  var errors = [];
  window.addEventListener('error', function(e){ errors.push(String(e.message)); document.body.dataset.errors = errors.join(' | '); });
  var data = JSON.parse(document.getElementById('retrace-data').textContent);
  var host = document.getElementById('charts');
  var width = Math.max(600, Math.min(1060, host.clientWidth || 1000));
  var rendered = 0;
  function marksPlugin(marks){
    return { hooks: { draw: [function(u){
      var ctx = u.ctx; ctx.save();
      marks.forEach(function(m){
        var x = u.valToPos(m.x, 'x', true);
        if (!isFinite(x)) return;
        ctx.strokeStyle = '#d62728'; ctx.setLineDash([6, 4]); ctx.lineWidth = 2;
        ctx.beginPath(); ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height); ctx.stroke();
        ctx.fillStyle = '#d62728'; ctx.font = (12 * devicePixelRatio) + 'px sans-serif';
        ctx.fillText(m.label, x + 4, u.bbox.top + 14 * devicePixelRatio);
      });
      ctx.restore();
    }]}};
  }
  data.charts.forEach(function(c){
    try {
      var box = document.createElement('div'); box.className = 'chart'; box.id = 'chart-' + c.id;
      var h = document.createElement('h3'); h.textContent = c.title; box.appendChild(h);
      host.appendChild(box);
      var hasY2 = c.series.some(function(s){ return s.scale === 'y2'; });
      var series = [{ label: c.time ? 'time' : (c.id === 'load' ? 'offered req/s' : 'percentile') }];
      c.series.forEach(function(s){
        series.push({ label: s.label, stroke: s.color, width: 2, scale: s.scale, spanGaps: false,
                      dash: s.dash ? [8, 6] : undefined, points: { show: !c.time } });
      });
      var axes = [{}, { label: c.y, scale: 'y' }];
      if (hasY2) axes.push({ label: c.y2, scale: 'y2', side: 1, grid: { show: false } });
      var scales = { x: { time: !!c.time }, y: { auto: true } };
      if (hasY2) scales.y2 = { auto: true };
      var opts = { width: width, height: 300, series: series, axes: axes, scales: scales,
                   tzDate: function(ts){ return uPlot.tzDate(new Date(ts * 1e3), 'Etc/UTC'); },
                   plugins: (c.marks && c.marks.length) ? [marksPlugin(c.marks)] : [] };
      var cols = [c.x].concat(c.series.map(function(s){ return s.values; }));
      new uPlot(opts, cols, box);
      rendered++;
    } catch (e) {
      errors.push(c.id + ': ' + e);
      document.body.dataset.errors = errors.join(' | ');
    }
  });
  document.body.dataset.chartsRendered = String(rendered);
  document.body.dataset.chartsExpected = String(data.charts.length);
})();
"#;

fn verdicts_html(r: &Report) -> String {
    let mut o = String::new();
    for v in &r.verdicts {
        let class = match v.severity {
            Severity::Fail => "fail",
            Severity::Warn => "warn",
            Severity::Info => "info",
            Severity::Pass => "pass",
        };
        o.push_str(&format!(
            "<div class=\"v {class}\"><div class=\"h\">{}</div>",
            esc(&v.headline)
        ));
        if !v.detail.is_empty() {
            o.push_str(&format!("<div class=\"d\">{}</div>", esc(&v.detail)));
        }
        if let Some(rem) = &v.remedy {
            o.push_str(&format!("<div class=\"r\">Fix: {}</div>", esc(rem)));
        }
        o.push_str("</div>\n");
    }
    o
}

fn numbers_html(r: &Report) -> String {
    let s = &r.summary;
    let mut o = String::from(
        "<table><tr><th></th><th>p50</th><th>p90</th><th>p95</th><th>p99</th><th>max</th></tr>",
    );
    for (name, p) in [
        ("TTFT", s.ttft),
        ("TPOT", s.tpot),
        ("ITL", s.itl),
        ("E2E", s.e2e),
    ] {
        if let Some(p) = p {
            o.push_str(&format!(
                "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&fmt_us(p.p50)),
                esc(&fmt_us(p.p90)),
                esc(&fmt_us(p.p95)),
                esc(&fmt_us(p.p99)),
                esc(&fmt_us(p.max))
            ));
        }
    }
    o.push_str("</table>");
    o.push_str(&format!(
        "<p>{:.2} req/s sent, {:.2} completed, {:.0} output tokens/s; errors {} ({:.2}%). TTFT and E2E are measured from the {} time{}.</p>",
        s.requests_per_s,
        s.completed_per_s,
        s.output_tokens_per_s,
        s.errors,
        s.error_rate * 100.0,
        esc(&r.latency_basis.replace('_', " ")),
        if r.latency_basis == "intended_send" { " (no coordinated omission)" } else { "" }
    ));
    o
}

impl Report {
    /// The self-contained HTML page.
    pub fn to_html(&self) -> String {
        let data = json!({ "charts": charts(self) });
        // Inside <script>, `</` would end the element: escape `<` in the JSON text.
        let blob = data.to_string().replace('<', "\\u003c");
        let s = &self.summary;
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>retrace analyze report</title><style>{UPLOT_CSS}</style><style>{PAGE_CSS}</style></head>\
<body data-charts-rendered=\"0\">\
<h1>retrace analyze</h1><p class=\"sub\">{} requests over {} from {} · {} · windows of {:.0} s</p>\
<h2>Verdicts</h2>{}<h2>Numbers</h2>{}<h2>Charts</h2><div id=\"charts\"></div>\
<script id=\"retrace-data\" type=\"application/json\">{blob}</script>\
<script>{UPLOT_JS}</script><script>{PAGE_JS}</script></body></html>\n",
            s.requests,
            esc(&fmt_offset(s.duration_s)),
            esc(&fmt_utc(s.start_us)),
            esc(&self.inputs.join(", ")),
            self.window_s,
            verdicts_html(self),
            numbers_html(self),
        )
    }

    /// Writes [`Report::to_html`] to `path`.
    pub fn write_html(&self, path: &Path) -> Result<(), AnalyzeError> {
        std::fs::write(path, self.to_html()).map_err(|source| AnalyzeError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
