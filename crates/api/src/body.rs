//! Reading request bodies: content type, size limit, decompression and UTF-8.
//!
//! The limit applies to the decompressed body, and decompression stops as soon as it is
//! passed, so a decompression bomb costs at most `limit` bytes of memory and gets 413.

use std::io::Read;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use http_body_util::{BodyExt, Limited};

use crate::error::ApiError;

/// What the body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    Ndjson,
}

/// A request body, decompressed and known to be UTF-8.
#[derive(Debug)]
pub struct TextBody {
    pub format: BodyFormat,
    pub text: String,
}

/// Reads the body of a request whose content type must be one of `formats`.
///
/// # Errors
/// 415 for another content type or encoding, 413 over `limit` bytes, 400 for a corrupt
/// compressed stream or text that is not UTF-8.
pub async fn read_text_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    formats: &[BodyFormat],
) -> Result<TextBody, ApiError> {
    let format = body_format(headers, formats)?;
    let encoding = content_encoding(headers)?;
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && length > limit as u64
    {
        return Err(too_large(limit, &format!("{length} bytes")));
    }
    let raw = collect(body, limit).await?;
    let bytes = decode(&raw, &encoding, limit)?;
    let mut text = String::from_utf8(bytes).map_err(|err| {
        ApiError::bad_request(
            "invalid_utf8",
            format!(
                "the body is not valid UTF-8: invalid byte at offset {}",
                err.utf8_error().valid_up_to()
            ),
        )
    })?;
    // A byte-order mark (what some editors put at the start of a file saved as UTF-8) is not
    // part of the JSON: dropped, once, at the start of the body.
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(TextBody { format, text })
}

/// The largest body, once decompressed, of an endpoint that takes a small JSON document
/// (destinations, tenants, replays): axum's own default for its `Json` extractor.
pub const SMALL_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// A request whose body was sent with a `Content-Encoding`, with the body decompressed (at
/// most `limit` bytes) and the header removed, so any extractor reads plain bytes. One rule
/// for every endpoint with a body: gzip and zstd are decoded, other encodings get 415.
///
/// # Errors
/// 415 for an unsupported encoding, 413 over `limit`, 400 for a corrupt stream.
pub async fn decode_content(
    request: axum::extract::Request,
    limit: usize,
) -> Result<axum::extract::Request, ApiError> {
    let encoding = content_encoding(request.headers())?;
    if matches!(encoding, Encoding::Identity) {
        return Ok(request);
    }
    let (mut parts, body) = request.into_parts();
    let raw = collect(body, limit).await?;
    let bytes = decode(&raw, &encoding, limit)?;
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(axum::extract::Request::from_parts(parts, Body::from(bytes)))
}

/// Reads a body to its end, at most `limit` bytes as sent.
async fn collect(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    let collected = Limited::new(body, limit).collect().await.map_err(|err| {
        if err
            .downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            too_large(limit, "more than that")
        } else {
            ApiError::bad_request("body_read", "the request body could not be read to its end")
        }
    })?;
    Ok(collected.to_bytes())
}

fn decode(raw: &[u8], encoding: &Encoding, limit: usize) -> Result<Vec<u8>, ApiError> {
    match encoding {
        Encoding::Identity => Ok(raw.to_vec()),
        Encoding::Gzip => decompress(flate2::read::MultiGzDecoder::new(raw), limit, "gzip"),
        Encoding::Zstd => {
            let decoder = ruzstd::decoding::StreamingDecoder::new(raw).map_err(|err| {
                ApiError::bad_request("bad_encoding", format!("the zstd body is corrupt: {err}"))
            })?;
            // A frame that declares more than the limit is refused before any of it is read.
            let declared = decoder.decoder.content_size();
            if declared > limit as u64 {
                return Err(too_large(
                    limit,
                    &format!("a zstd frame that declares {declared} bytes"),
                ));
            }
            decompress(decoder, limit, "zstd")
        }
    }
}

fn too_large(limit: usize, received: &str) -> ApiError {
    ApiError::too_large(format!(
        "the request body is over the limit of {limit} bytes ({} MiB); received {received}",
        limit / (1024 * 1024)
    ))
    .with_field("limit_bytes", limit)
}

fn decompress(reader: impl Read, limit: usize, name: &str) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|err| {
            ApiError::bad_request("bad_encoding", format!("the {name} body is corrupt: {err}"))
        })?;
    if out.len() > limit {
        return Err(too_large(limit, "more than that once decompressed"));
    }
    Ok(out)
}

enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

fn content_encoding(headers: &HeaderMap) -> Result<Encoding, ApiError> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    match value
        .to_str()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        "zstd" => Ok(Encoding::Zstd),
        other => Err(ApiError::unsupported_media_type(format!(
            "Content-Encoding {other:?} is not supported; use gzip, zstd or none"
        ))),
    }
}

fn body_format(headers: &HeaderMap, formats: &[BodyFormat]) -> Result<BodyFormat, ApiError> {
    let allow_ndjson = formats.contains(&BodyFormat::Ndjson);
    // A missing Content-Type is read as JSON: the body must parse as JSON anyway.
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(BodyFormat::Json);
    };
    let value = value.to_str().unwrap_or_default();
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let charset_ok = value
        .split(';')
        .skip(1)
        .filter_map(|param| param.trim().split_once('='))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("charset"))
        .all(|(_, charset)| {
            charset
                .trim()
                .trim_matches('"')
                .eq_ignore_ascii_case("utf-8")
        });
    let format = match essence.as_str() {
        "application/json" => Some(BodyFormat::Json),
        essence if essence.starts_with("application/") && essence.ends_with("+json") => {
            Some(BodyFormat::Json)
        }
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" if allow_ndjson => {
            Some(BodyFormat::Ndjson)
        }
        _ => None,
    };
    match format {
        Some(format) if charset_ok => Ok(format),
        Some(_) => Err(ApiError::unsupported_media_type(
            "only UTF-8 bodies are accepted",
        )),
        None => Err(ApiError::unsupported_media_type(if allow_ndjson {
            format!(
                "Content-Type {value:?} is not accepted here; send application/json or application/x-ndjson"
            )
        } else {
            format!("Content-Type {value:?} is not accepted here; send application/json")
        })),
    }
}
