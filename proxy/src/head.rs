//! The upstream request's head, written straight from the client's in one pass: hop-by-hop
//! fields left out, the forwarding fields joined or added, Host set (RFC 9110 §7.6). Doing
//! it by editing the client's `HeaderMap` first (a hashed lookup, removal or insertion per
//! change) cost about a tenth of the proxy's instructions a request.

use std::net::SocketAddr;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version};

use crate::forward::{has_token, list_tokens};

/// What the upstream request says about the client's connection, made once a connection
/// (a request's forwarding fields were a tenth of the proxy's instructions when each was
/// formatted again).
pub(crate) struct Peer {
    /// `http` or `https`: the protocol the client spoke to the proxy.
    proto: &'static str,
    /// The client's address as an `X-Forwarded-For` element.
    forwarded_for: HeaderValue,
    /// The `for=` parameter of a `Forwarded` element (RFC 7239: IPv6 quoted, bracketed).
    forwarded_param: String,
}

impl Peer {
    pub(crate) fn new(addr: SocketAddr, tls: bool) -> Peer {
        let ip = addr.ip().to_canonical();
        let text = ip.to_string();
        Peer {
            proto: if tls { "https" } else { "http" },
            forwarded_param: if ip.is_ipv6() {
                format!("for=\"[{text}]\"")
            } else {
                format!("for={text}")
            },
            forwarded_for: HeaderValue::from_str(&text)
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
        }
    }
}

/// What a client field becomes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// Sent as is.
    Keep,
    /// Not sent: hop-by-hop (the fixed list, or named by `Connection`) or `Trailer`.
    Drop,
    /// A list the proxy appends its own element to, every line joined into one.
    Append(Appended),
    /// Replaced by the Host the proxy sends.
    Host,
    /// Sent as is; its presence means the proxy adds none.
    XForwardedProto,
    /// Sent as is; its presence means the proxy adds none.
    XForwardedHost,
}

/// The list fields the proxy appends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Appended {
    XForwardedFor = 0,
    Forwarded = 1,
    Via = 2,
}

/// The fields the proxy writes at most once: which of them were written in place.
#[derive(Debug, Default)]
struct Written {
    appended: [bool; 3],
    host: bool,
    x_forwarded_proto: bool,
    x_forwarded_host: bool,
}

/// The hop-by-hop fields of RFC 9110 §7.6.1, and two that clients still send.
/// `Trailer` is end to end, but the upstream client sends no request trailers, so the
/// upstream must not be told to expect any.
fn fixed_field(name: &HeaderName) -> Field {
    match name.as_str() {
        "connection"
        | "keep-alive"
        | "proxy-connection"
        | "proxy-authenticate"
        | "proxy-authorization"
        | "te"
        | "transfer-encoding"
        | "upgrade"
        | "trailer" => Field::Drop,
        "x-forwarded-for" => Field::Append(Appended::XForwardedFor),
        "forwarded" => Field::Append(Appended::Forwarded),
        "via" => Field::Append(Appended::Via),
        "host" => Field::Host,
        "x-forwarded-proto" => Field::XForwardedProto,
        "x-forwarded-host" => Field::XForwardedHost,
        _ => Field::Keep,
    }
}

/// A request head to send upstream: the client's fields and what the proxy changes.
pub(crate) struct RequestHead<'a> {
    pub(crate) method: &'a Method,
    /// The request target: the client's path and query after the upstream's base path.
    target: &'a str,
    /// The client's fields, as received.
    headers: &'a HeaderMap,
    /// Fields the client's `Connection` names (hop-by-hop too); almost always none.
    connection_named: Vec<HeaderName>,
    peer: &'a Peer,
    /// The client's Host (or its URI's authority, for HTTP/2).
    original_host: Option<HeaderValue>,
    /// The Host sent upstream.
    host: Option<HeaderValue>,
    /// The `Via` element for the client's protocol version.
    via: &'static str,
    /// The client takes trailers (`TE: trailers`): the proxy asks for them on its hop.
    takes_trailers: bool,
}

/// The `Via` element for the client's protocol version (RFC 9110 §7.6.3).
fn via_token(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9 retrace",
        Version::HTTP_10 => "1.0 retrace",
        Version::HTTP_2 => "2 retrace",
        Version::HTTP_3 => "3 retrace",
        _ => "1.1 retrace",
    }
}

/// The client's request target with the upstream's base path in front, when the upstream
/// URL has one (`Ok(None)`: the client's target goes as is); an error when the two do not
/// make a valid target.
pub(crate) fn based_target(
    parts: &http::request::Parts,
    base_path: &str,
) -> Result<Option<String>, http::uri::InvalidUri> {
    if base_path.is_empty() {
        return Ok(None);
    }
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let joined = format!("{base_path}{target}");
    http::uri::PathAndQuery::try_from(joined.as_str())?;
    Ok(Some(joined))
}

impl<'a> RequestHead<'a> {
    /// The head for the client request `parts`. `based_target`: from [`based_target`].
    /// `upstream_host`: the Host to send, unless the client's is kept (`preserve_host`).
    pub(crate) fn new(
        parts: &'a http::request::Parts,
        based_target: Option<&'a str>,
        peer: &'a Peer,
        upstream_host: Option<&HeaderValue>,
        preserve_host: bool,
    ) -> Self {
        let headers = &parts.headers;
        let original_host = headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let connection_named = if headers.contains_key(header::CONNECTION) {
            list_tokens(headers, &header::CONNECTION)
                .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
                .collect()
        } else {
            Vec::new()
        };
        let host = if preserve_host {
            original_host.clone()
        } else {
            upstream_host.cloned()
        };
        RequestHead {
            method: &parts.method,
            target: based_target
                .unwrap_or_else(|| parts.uri.path_and_query().map_or("/", |pq| pq.as_str())),
            headers,
            connection_named,
            peer,
            original_host,
            host,
            via: via_token(parts.version),
            takes_trailers: has_token(headers, &header::TE, "trailers"),
        }
    }

    fn field(&self, name: &HeaderName) -> Field {
        if !self.connection_named.is_empty() && self.connection_named.contains(name) {
            return Field::Drop;
        }
        match fixed_field(name) {
            // No Host to send instead: the client's is kept.
            Field::Host if self.host.is_none() => Field::Keep,
            field => field,
        }
    }

    /// Whether the head sent upstream carries the client's Content-Length.
    pub(crate) fn has_content_length(&self) -> bool {
        self.headers.contains_key(header::CONTENT_LENGTH)
            && self.field(&header::CONTENT_LENGTH) == Field::Keep
    }

    /// Writes the request line and the fields (not the framing field nor the blank line).
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.extend_from_slice(b" ");
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut written = Written::default();
        // A HeaderMap yields every value of a name together, the first at the name's place.
        let mut previous: Option<(&HeaderName, Field)> = None;
        for (name, value) in self.headers {
            let field = match previous {
                Some((seen, field)) if seen == name => field,
                _ => {
                    let field = self.field(name);
                    previous = Some((name, field));
                    match field {
                        Field::Append(which) => {
                            self.append_line(out, which, self.headers.get_all(name).iter());
                            written.appended[which as usize] = true;
                        }
                        Field::Host => {
                            if let Some(host) = &self.host {
                                line(out, header::HOST.as_str(), host.as_bytes());
                            }
                            written.host = true;
                        }
                        Field::XForwardedProto => written.x_forwarded_proto = true,
                        Field::XForwardedHost => written.x_forwarded_host = true,
                        Field::Keep | Field::Drop => {}
                    }
                    field
                }
            };
            if matches!(
                field,
                Field::Keep | Field::XForwardedProto | Field::XForwardedHost
            ) {
                line(out, name.as_str(), value.as_bytes());
            }
        }
        // What the client did not send goes after its fields.
        if self.takes_trailers {
            out.extend_from_slice(b"te: trailers\r\nconnection: te\r\n");
        }
        for which in [Appended::XForwardedFor, Appended::Forwarded, Appended::Via] {
            if !written.appended[which as usize] {
                self.append_line(out, which, std::iter::empty());
            }
        }
        if !written.x_forwarded_proto {
            line(out, "x-forwarded-proto", self.peer.proto.as_bytes());
        }
        if let (false, Some(host)) = (written.x_forwarded_host, &self.original_host) {
            line(out, "x-forwarded-host", host.as_bytes());
        }
        if let (false, Some(host)) = (written.host, &self.host) {
            line(out, header::HOST.as_str(), host.as_bytes());
        }
    }

    /// One line of a list field: the client's non-empty elements, then the proxy's.
    fn append_line<'v>(
        &self,
        out: &mut BytesMut,
        which: Appended,
        existing: impl Iterator<Item = &'v HeaderValue>,
    ) {
        out.extend_from_slice(match which {
            Appended::XForwardedFor => b"x-forwarded-for: ".as_slice(),
            Appended::Forwarded => b"forwarded: ",
            Appended::Via => b"via: ",
        });
        for value in existing.filter(|v| !v.is_empty()) {
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b", ");
        }
        match which {
            Appended::XForwardedFor => out.extend_from_slice(self.peer.forwarded_for.as_bytes()),
            Appended::Forwarded => {
                // RFC 7239: `for=…;proto=…;host="…"` (the host only when it is text).
                out.extend_from_slice(self.peer.forwarded_param.as_bytes());
                out.extend_from_slice(b";proto=");
                out.extend_from_slice(self.peer.proto.as_bytes());
                if let Some(host) = self.original_host.as_ref().and_then(|h| h.to_str().ok()) {
                    out.extend_from_slice(b";host=\"");
                    out.extend_from_slice(host.as_bytes());
                    out.extend_from_slice(b"\"");
                }
            }
            Appended::Via => out.extend_from_slice(self.via.as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
    }
}

fn line(out: &mut BytesMut, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    type Fields = BTreeMap<String, Vec<Vec<u8>>>;

    const NAMES: &[&str] = &[
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
        "x-forwarded-for",
        "forwarded",
        "via",
        "x-forwarded-proto",
        "x-forwarded-host",
        "content-length",
        "content-type",
        "x-a",
        "x-b",
    ];
    const VALUES: &[&[u8]] = &[
        b"",
        b"a",
        b"10.1.2.3",
        b"x-a",
        b"X-B, via",
        b"trailers",
        b"gzip, trailers",
        b"close",
        b"host",
        b"x-forwarded-for",
        b"te",
        b" x-b ,x-forwarded-proto",
        b"content-length",
        b"example.com:80",
        b"caf\xc3\xa9",
        b"q\"uote",
    ];

    /// The upstream head as the proxy defines it, written from the field list: the
    /// hop-by-hop fields (and what `Connection` names) removed, the three lists joined
    /// with the proxy's element last, X-Forwarded-Proto/-Host added when absent, Host set.
    fn expected(
        pairs: &[(&str, &[u8])],
        authority: Option<&str>,
        version: Version,
        peer: &Peer,
        upstream_host: Option<&str>,
        preserve_host: bool,
    ) -> Fields {
        let texts = |name: &str| -> Vec<String> {
            pairs
                .iter()
                .filter(|(n, _)| *n == name)
                .filter_map(|(_, v)| std::str::from_utf8(v).ok().map(str::to_owned))
                .collect()
        };
        let tokens = |name: &str| -> Vec<String> {
            texts(name)
                .iter()
                .flat_map(|v| {
                    v.split(',')
                        .map(|t| t.trim().to_owned())
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let original_host: Option<Vec<u8>> = pairs
            .iter()
            .find(|(n, _)| *n == "host")
            .map(|(_, v)| v.to_vec())
            .or_else(|| authority.map(|a| a.as_bytes().to_vec()));
        let named: Vec<String> = tokens("connection")
            .iter()
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .map(|n| n.as_str().to_owned())
            .collect();
        let takes_trailers = tokens("te")
            .iter()
            .any(|t| t.eq_ignore_ascii_case("trailers"));
        let hop = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "transfer-encoding",
            "upgrade",
            "trailer",
        ];
        let mut fields = Fields::new();
        for (name, value) in pairs {
            if !hop.contains(name) && !named.iter().any(|n| n == name) {
                fields
                    .entry(name.to_string())
                    .or_default()
                    .push(value.to_vec());
            }
        }
        let host_text = original_host
            .as_ref()
            .and_then(|h| HeaderValue::from_bytes(h).ok())
            .and_then(|h| h.to_str().ok().map(str::to_owned));
        let forwarded = format!(
            "{};proto={}{}",
            peer.forwarded_param,
            peer.proto,
            host_text.map_or(String::new(), |h| format!(";host=\"{h}\""))
        );
        for (name, ours) in [
            ("x-forwarded-for", peer.forwarded_for.as_bytes().to_vec()),
            ("forwarded", forwarded.into_bytes()),
            ("via", via_token(version).as_bytes().to_vec()),
        ] {
            let mut joined = Vec::new();
            for value in fields.remove(name).unwrap_or_default() {
                if !value.is_empty() {
                    joined.extend_from_slice(&value);
                    joined.extend_from_slice(b", ");
                }
            }
            joined.extend_from_slice(&ours);
            fields.insert(name.to_owned(), vec![joined]);
        }
        if takes_trailers {
            fields.insert("te".into(), vec![b"trailers".to_vec()]);
            fields.insert("connection".into(), vec![b"te".to_vec()]);
        }
        fields
            .entry("x-forwarded-proto".into())
            .or_insert_with(|| vec![peer.proto.as_bytes().to_vec()]);
        if let Some(host) = &original_host {
            fields
                .entry("x-forwarded-host".into())
                .or_insert_with(|| vec![host.clone()]);
        }
        let host = if preserve_host {
            original_host
        } else {
            upstream_host.map(|h| h.as_bytes().to_vec())
        };
        if let Some(host) = host {
            fields.insert("host".into(), vec![host]);
        }
        fields
    }

    /// The request line and the fields of a written head.
    fn written(head: &RequestHead<'_>) -> (String, Fields) {
        let mut out = BytesMut::new();
        head.encode(&mut out);
        let text = out.to_vec();
        let body = text.strip_suffix(b"\r\n").unwrap();
        let mut lines = body
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let request_line = String::from_utf8(lines.next().unwrap().to_vec()).unwrap();
        let mut fields = Fields::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let colon = line.iter().position(|&b| b == b':').unwrap();
            let value = line[colon + 1..].strip_prefix(b" ").unwrap();
            let name = String::from_utf8(line[..colon].to_vec()).unwrap();
            fields.entry(name).or_default().push(value.to_vec());
        }
        (request_line, fields)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

        /// The head written in one pass is the head the proxy's forwarding rules define,
        /// whatever fields, versions and options the request comes with.
        #[test]
        fn the_upstream_head_follows_the_forwarding_rules(
            picks in proptest::collection::vec((0..NAMES.len(), 0..VALUES.len()), 0..12),
            version in prop_oneof![Just(Version::HTTP_10), Just(Version::HTTP_11), Just(Version::HTTP_2)],
            with_authority in any::<bool>(),
            v6 in any::<bool>(),
            tls in any::<bool>(),
            upstream_host in prop_oneof![Just(None), Just(Some("up.internal:8000"))],
            preserve_host in any::<bool>(),
            base_path in prop_oneof![Just(""), Just("/api")],
        ) {
            let pairs: Vec<(&str, &[u8])> =
                picks.iter().map(|&(n, v)| (NAMES[n], VALUES[v])).collect();
            let authority = with_authority.then_some("client.example:8080");
            let uri = match authority {
                Some(a) => format!("http://{a}/v1/completions?x=1"),
                None => "/v1/completions?x=1".to_owned(),
            };
            let mut request = http::Request::builder().method("POST").uri(uri).version(version);
            for (name, value) in &pairs {
                request = request.header(*name, *value);
            }
            let (parts, ()) = request.body(()).unwrap().into_parts();
            let addr: SocketAddr = if v6 { "[::1]:5000" } else { "10.9.8.7:5000" }.parse().unwrap();
            let peer = Peer::new(addr, tls);
            let upstream = upstream_host.map(HeaderValue::from_static);
            let based = based_target(&parts, base_path).unwrap();
            let head = RequestHead::new(&parts, based.as_deref(), &peer, upstream.as_ref(), preserve_host);

            let (request_line, fields) = written(&head);
            prop_assert_eq!(request_line, format!("POST {base_path}/v1/completions?x=1 HTTP/1.1"));
            let want = expected(&pairs, authority, version, &peer, upstream_host, preserve_host);
            prop_assert_eq!(fields, want);
            let length_sent = written(&head).1.contains_key("content-length");
            prop_assert_eq!(head.has_content_length(), length_sent);
        }
    }

    #[test]
    fn a_plain_request_gets_the_forwarding_fields_once() {
        let (parts, ()) = http::Request::builder()
            .uri("/v1/chat/completions")
            .header("host", "proxy:80")
            .header("content-type", "application/json")
            .body(())
            .unwrap()
            .into_parts();
        let peer = Peer::new("127.0.0.1:1".parse().unwrap(), false);
        let upstream = HeaderValue::from_static("up:8000");
        let head = RequestHead::new(&parts, None, &peer, Some(&upstream), false);
        let mut out = BytesMut::new();
        head.encode(&mut out);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "GET /v1/chat/completions HTTP/1.1\r\n\
             host: up:8000\r\n\
             content-type: application/json\r\n\
             x-forwarded-for: 127.0.0.1\r\n\
             forwarded: for=127.0.0.1;proto=http;host=\"proxy:80\"\r\n\
             via: 1.1 retrace\r\n\
             x-forwarded-proto: http\r\n\
             x-forwarded-host: proxy:80\r\n"
        );
    }
}
