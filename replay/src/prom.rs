//! A small, robust parser of the Prometheus text exposition format (version 0.0.4) and the
//! mapping of each server's metric names to retrace's canonical set. The parser never
//! panics: a malformed line is skipped and counted, never fatal (it is fuzzed).

use std::collections::BTreeMap;

/// One parsed sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct PromSample {
    /// Metric name.
    pub name: String,
    /// Labels, sorted by key.
    pub labels: BTreeMap<String, String>,
    /// Value (may be NaN or ±Inf).
    pub value: f64,
}

/// The result of parsing one exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    /// Samples in document order.
    pub samples: Vec<PromSample>,
    /// Lines that could not be parsed (skipped).
    pub bad_lines: u32,
}

/// Parses a whole exposition.
pub fn parse(text: &str) -> Parsed {
    let mut out = Parsed::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Some(sample) => out.samples.push(sample),
            None => out.bad_lines = out.bad_lines.saturating_add(1),
        }
    }
    out
}

fn is_name_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
}

fn parse_line(line: &str) -> Option<PromSample> {
    let mut chars = line.char_indices().peekable();
    let mut name_end = 0;
    while let Some(&(i, c)) = chars.peek() {
        if !is_name_char(c, i == 0) {
            break;
        }
        name_end = i + c.len_utf8();
        chars.next();
    }
    if name_end == 0 {
        return None;
    }
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, remaining) = parse_labels(after)?;
        labels = parsed;
        rest = remaining;
    }
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next()?)?;
    // An optional timestamp may follow; anything beyond that is malformed.
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().ok()?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some(PromSample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` and returns the labels and the text after `}`.
fn parse_labels(text: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = rest.find('=')?;
        let key = rest[..eq].trim();
        if key.is_empty()
            || !key
                .chars()
                .enumerate()
                .all(|(i, c)| is_name_char(c, i == 0) && c != ':')
        {
            return None;
        }
        rest = rest[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut escaped = false;
        let mut end = None;
        for (i, c) in rest.char_indices() {
            if escaped {
                value.push(match c {
                    'n' => '\n',
                    other => other,
                });
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                end = Some(i);
                break;
            } else {
                value.push(c);
            }
        }
        let end = end?;
        labels.insert(key.to_string(), value);
        rest = rest[end + 1..].trim_start();
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return None;
        }
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        other => other.parse::<f64>().ok(),
    }
}

/// A server whose metric names we know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsFlavor {
    /// vLLM (`vllm:`).
    Vllm,
    /// SGLang (`sglang:`).
    Sglang,
    /// Text Generation Inference (`tgi_`).
    Tgi,
    /// llama.cpp server (`llamacpp:`).
    LlamaCpp,
}

/// Guesses the server from its metric names.
pub fn detect_flavor(parsed: &Parsed) -> Option<MetricsFlavor> {
    parsed.samples.iter().find_map(|s| {
        if s.name.starts_with("vllm:") {
            Some(MetricsFlavor::Vllm)
        } else if s.name.starts_with("sglang:") {
            Some(MetricsFlavor::Sglang)
        } else if s.name.starts_with("tgi_") {
            Some(MetricsFlavor::Tgi)
        } else if s.name.starts_with("llamacpp:") {
            Some(MetricsFlavor::LlamaCpp)
        } else {
            None
        }
    })
}

/// Maps a raw metric name to (canonical name, multiplier), when it has one.
pub fn canonical(name: &str) -> Option<(&'static str, f64)> {
    Some(match name {
        "vllm:gpu_cache_usage_perc" | "vllm:kv_cache_usage_perc" => ("kv_cache_usage", 1.0),
        "vllm:num_requests_waiting" => ("queue_depth", 1.0),
        "vllm:num_requests_running" => ("running", 1.0),
        "vllm:num_preemptions_total" | "vllm:num_preemptions" => ("preemptions_total", 1.0),
        "sglang:num_queue_reqs" => ("queue_depth", 1.0),
        "sglang:num_running_reqs" => ("running", 1.0),
        "sglang:token_usage" => ("kv_cache_usage", 1.0),
        "tgi_queue_size" => ("queue_depth", 1.0),
        "tgi_batch_current_size" => ("running", 1.0),
        "llamacpp:requests_processing" => ("running", 1.0),
        "llamacpp:requests_deferred" => ("queue_depth", 1.0),
        "llamacpp:kv_cache_usage_ratio" => ("kv_cache_usage", 1.0),
        // DCGM reports framebuffer memory in MiB.
        "DCGM_FI_DEV_FB_USED" => ("gpu_memory_used_bytes", 1024.0 * 1024.0),
        "process_resident_memory_bytes" => ("server_rss_bytes", 1.0),
        _ => return None,
    })
}

/// One canonical sample: name, labels as sorted `k=v` joined by `,`, value.
#[derive(Debug, Clone, PartialEq)]
pub struct CanonicalSample {
    /// Canonical name.
    pub name: &'static str,
    /// Labels (`k=v,k2=v2`, sorted).
    pub labels: String,
    /// Value in canonical units.
    pub value: f64,
}

/// The canonical samples of a parsed exposition (non-finite values are dropped).
pub fn canonical_samples(parsed: &Parsed) -> Vec<CanonicalSample> {
    parsed
        .samples
        .iter()
        .filter_map(|s| {
            let (name, scale) = canonical(&s.name)?;
            let value = s.value * scale;
            if !value.is_finite() {
                return None;
            }
            let labels = s
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            Some(CanonicalSample {
                name,
                labels,
                value,
            })
        })
        .collect()
}

/// Figures for the live display: total queue depth and the highest KV-cache usage.
pub fn headline(samples: &[CanonicalSample]) -> (Option<f64>, Option<f64>) {
    let mut queue = None;
    let mut kv: Option<f64> = None;
    for s in samples {
        match s.name {
            "queue_depth" => *queue.get_or_insert(0.0) += s.value,
            "kv_cache_usage" => kv = Some(kv.map_or(s.value, |k| k.max(s.value))),
            _ => {}
        }
    }
    (queue, kv)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn value_of(samples: &[CanonicalSample], name: &str) -> f64 {
        samples
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .value
    }

    #[test]
    fn vllm_old_and_new_names() {
        let text = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="meta-llama/Llama-3.1-8B-Instruct"} 12.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.4213
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.0
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.001",model_name="m"} 0.0
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 5.0
process_resident_memory_bytes 1.23456789e+09
"#;
        let parsed = parse(text);
        assert_eq!(parsed.bad_lines, 0);
        assert_eq!(detect_flavor(&parsed), Some(MetricsFlavor::Vllm));
        let c = canonical_samples(&parsed);
        assert_eq!(value_of(&c, "running"), 12.0);
        assert_eq!(value_of(&c, "queue_depth"), 3.0);
        assert!((value_of(&c, "kv_cache_usage") - 0.4213).abs() < 1e-12);
        assert_eq!(value_of(&c, "preemptions_total"), 7.0);
        assert_eq!(value_of(&c, "server_rss_bytes"), 1_234_567_890.0);
        assert_eq!(c[0].labels, "model_name=meta-llama/Llama-3.1-8B-Instruct");
        let new = parse("vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.25\n");
        let c = canonical_samples(&new);
        assert_eq!(value_of(&c, "kv_cache_usage"), 0.25);
        assert_eq!(c[0].labels, "engine=0,model_name=m");
    }

    #[test]
    fn sglang_tgi_llamacpp_dcgm() {
        let sglang = "# TYPE sglang:num_queue_reqs gauge\nsglang:num_queue_reqs{model_name=\"qwen\"} 4.0\nsglang:num_running_reqs{model_name=\"qwen\"} 9.0\nsglang:token_usage{model_name=\"qwen\"} 0.61\n";
        let p = parse(sglang);
        assert_eq!(detect_flavor(&p), Some(MetricsFlavor::Sglang));
        let c = canonical_samples(&p);
        assert_eq!(headline(&c), (Some(4.0), Some(0.61)));
        assert_eq!(value_of(&c, "running"), 9.0);

        let tgi = "# TYPE tgi_queue_size gauge\ntgi_queue_size 2\n# TYPE tgi_batch_current_size gauge\ntgi_batch_current_size 16\n";
        let p = parse(tgi);
        assert_eq!(detect_flavor(&p), Some(MetricsFlavor::Tgi));
        let c = canonical_samples(&p);
        assert_eq!(
            (value_of(&c, "queue_depth"), value_of(&c, "running")),
            (2.0, 16.0)
        );

        let llama = "# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.\n# TYPE llamacpp:kv_cache_usage_ratio gauge\nllamacpp:kv_cache_usage_ratio 0.125\nllamacpp:requests_processing 1\nllamacpp:requests_deferred 5\n";
        let p = parse(llama);
        assert_eq!(detect_flavor(&p), Some(MetricsFlavor::LlamaCpp));
        let c = canonical_samples(&p);
        assert_eq!(headline(&c), (Some(5.0), Some(0.125)));

        let dcgm = "# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).\n# TYPE DCGM_FI_DEV_FB_USED gauge\nDCGM_FI_DEV_FB_USED{gpu=\"0\",UUID=\"GPU-abc\",device=\"nvidia0\",modelName=\"NVIDIA H100 80GB HBM3\",Hostname=\"node-1\"} 70123\nDCGM_FI_DEV_FB_USED{gpu=\"1\",UUID=\"GPU-def\",device=\"nvidia1\",modelName=\"NVIDIA H100 80GB HBM3\",Hostname=\"node-1\"} 10\n";
        let c = canonical_samples(&parse(dcgm));
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].value, 70123.0 * 1048576.0);
        assert!(c[1].labels.contains("gpu=1"));
    }

    #[test]
    fn escapes_timestamps_and_specials() {
        let p = parse("m{path=\"a\\\"b\\\\c\\nd\",x=\"{}\"} +Inf 1700000000000\nn NaN\no -Inf\n");
        assert_eq!(p.bad_lines, 0);
        assert_eq!(p.samples[0].labels["path"], "a\"b\\c\nd");
        assert_eq!(p.samples[0].labels["x"], "{}");
        assert!(p.samples[0].value.is_infinite());
        assert!(p.samples[1].value.is_nan());
    }

    #[test]
    fn malformed_lines_are_skipped_not_fatal() {
        let text = "good 1\n{bad} 1\nno_value\nm{unterminated=\"x} 1\nm{k=v} 1\nm 1 2 3\nm 1 notatime\nm{=\"x\"} 1\n\u{fffd}\u{0} 3\ngood2 2\n";
        let p = parse(text);
        assert_eq!(p.samples.len(), 2);
        assert_eq!(p.bad_lines, 8);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_any_text(text in "\\PC*") {
            let _ = canonical_samples(&parse(&text));
        }

        #[test]
        fn never_panics_on_metric_like_text(text in "[a-z_:{}=\",\\\\ .0-9+IinfNa#\n-]{0,200}") {
            let _ = canonical_samples(&parse(&text));
        }
    }
}
